"""SEG and SR encode time, and the peak memory of one full study processed end to end.

Two figures of issue 6's fourth benchmark, one command:

* encode: ``build_segmentations`` (one DICOM-SEG per stack) + ``build_report`` (the TID 1500
  SR) for the full-size phantom (3 stacks x 140 slices, 384 x 384, 36 segments) with the
  shipped reporting config's SEG type, in memory, best of ``--repeat`` after a first call
  that loads highdicom's tables (reported apart); writing them (``save_as``) is reported
  beside. The study, labels and results come from ``benchmarks/encode_seg_sr.py`` (issue 4),
  which also times both SEG types.
* peak memory: ``myonode process`` (a subprocess, ``--device cpu``) on the same study. The
  resident memory of the process and its children is summed every 50 ms from /proc, and the
  kernel's own peak of the process (``ru_maxrss`` from ``wait4``) is taken too; the larger
  is reported. The model is the shipped ``models/thigh-phantom``, else the training config's
  network with random weights (``common.benchmark_model``), which may route the study to
  the HI model as well (both run then; the row says which was used).

    python benchmarks/peak_memory.py [--repeat 3] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from bench_common import (
    CACHE,
    benchmark_model,
    busy_processes,
    conditions,
    phantom,
    record,
    row,
    row_note,
)
from encode_seg_sr import MODEL, load, timed, write_all

from dicom_node.phantom.study import PhantomOptions
from reporting.seg import build_segmentations, load_reporting_config
from reporting.sr import build_report

ENCODE_GOAL_S = 2.0
MEMORY_GOAL_GB = 4.0  # 10^9 bytes


def encode_times(folder: Path, repeat: int) -> dict:
    """SEG and SR build times (first call, best, median) and the write time."""
    study, grid, labels, results = load(folder)
    config = load_reporting_config()
    runs = []
    for _ in range(repeat + 1):
        segs, seg_s = timed(build_segmentations, study, labels, grid, MODEL, config)
        sr, sr_s = timed(build_report, study, segs, results, MODEL, config)
        size, write_s = timed(write_all, [*segs, sr])
        runs.append((seg_s, sr_s, write_s))
    first, rest = runs[0], runs[1:]
    both = [a + b for a, b, _ in rest]
    return {"type": config.segmentation_type, "first_s": first[0] + first[1],
            "best_s": min(both), "median_s": statistics.median(both),
            "seg_s": min(a for a, _, _ in rest), "sr_s": min(b for _, b, _ in rest),
            "write_s": min(c for _, _, c in rest), "bytes": size}


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (0 for those gone meanwhile)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def process_peak(dicom: Path, model: Path, out: Path) -> dict:
    """Run ``myonode process`` and watch its memory; peak bytes, wall time, results."""
    config = out.parent / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"model": str(model), "device": "cpu"}), encoding="utf-8")
    command = [sys.executable, "-m", "dicom_node.cli", "process", str(dicom), "--out", str(out),
               "--config", str(config), "--device", "cpu"]
    started = time.perf_counter()
    log = open(out.parent / "process.log", "wb")  # noqa: SIM115 - closed below
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(child.pid))
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    log.close()
    if child.returncode != 0:
        tail = (out.parent / "process.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"myonode process failed ({child.returncode}):\n{tail}")
    results = json.loads((out / "results.json").read_text())
    return {"polled_bytes": peak[0], "maxrss_bytes": usage.ru_maxrss * 1024, "wall_s": wall,
            "timings_s": results.get("timings_s", {}),
            "model_used": results.get("model", {}).get("used")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="add the rows to BENCHMARKS.md")
    parser.add_argument("--note", default="", help="text for the rows' note column")
    args = parser.parse_args()
    dicom = phantom("study-3stack", PhantomOptions())
    model, model_name = benchmark_model()
    rows = []

    cond = conditions()
    busy = busy_processes()
    enc = encode_times(CACHE / "study-3stack", args.repeat)
    print(json.dumps(enc, indent=1), flush=True)
    verdict = "met" if enc["best_s"] <= ENCODE_GOAL_S else \
        f"MISSED by {enc['best_s'] - ENCODE_GOAL_S:.2f} s"
    note = row_note([
        (f"3 SEGs ({enc['type']}) {enc['seg_s']:.2f} s + SR {enc['sr_s']:.2f} s (best of "
         f"{args.repeat}; median {enc['median_s']:.2f} s; first call {enc['first_s']:.2f} s)"),
        f"writing them {enc['write_s']:.2f} s ({enc['bytes'] / 1e6:.0f} MB)"], busy, args.note)
    rows.append(row(cond, ["SEG + SR encode, 3 stacks", f"{enc['best_s']:.2f} s",
                           f"<= {ENCODE_GOAL_S:.0f} s: {verdict}", note]))
    print(rows[-1], flush=True)

    cond = conditions()
    busy = busy_processes()
    with tempfile.TemporaryDirectory(prefix="peak-") as work:
        run = process_peak(dicom, model, Path(work) / "out")
    print(json.dumps(run, indent=1), flush=True)
    peak = max(run["polled_bytes"], run["maxrss_bytes"])
    verdict = "met" if peak <= MEMORY_GOAL_GB * 1e9 else \
        f"MISSED by {(peak / 1e9 - MEMORY_GOAL_GB):.2f} GB"
    stages = ", ".join(f"{k} {v:.1f}" for k, v in run["timings_s"].items() if k != "total")
    note = row_note([
        (f"polled tree sum {run['polled_bytes'] / 1e9:.2f} GB, ru_maxrss "
         f"{run['maxrss_bytes'] / 1e9:.2f} GB"), f"wall {run['wall_s']:.0f} s ({stages})",
        model_name, f"model used: {run['model_used']}"], busy, args.note)
    rows.append(row(cond, ["peak memory, myonode process, 3 stacks", f"{peak / 1e9:.2f} GB",
                           f"<= {MEMORY_GOAL_GB:.0f} GB: {verdict}", note]))
    print(rows[-1], flush=True)
    if args.record:
        record("encode_and_memory", rows)


if __name__ == "__main__":
    main()
