"""Accuracy of a model package on held-out phantoms: issue 3's acceptance, one command.

Six full-size phantom studies whose seeds no training run may use (seeds < 900 are refused
by ``myonode train``): three of low and three of high fat infiltration, mixed vendors and
1-3 stacks. Each is processed by ``myonode process`` (a subprocess, so its wall and CPU time
are its own) and scored with ``myonode evaluate``'s code against the phantom's truth:

* mean Dice per muscle (both sides, the three cases of a level) - goal >= 0.95 (low) and
  >= 0.90 (high); the row gives the mean over the 18 muscles and the worst muscle;
* FF% of each muscle and side against truth over all six cases (Bland-Altman) - goal
  |bias| <= 0.5 percentage points, 95% limits of agreement within +-1.5.

    python benchmarks/accuracy.py [--model PACKAGE_DIR] [--device cpu] [--record]

The full report (per case, muscle and side) is written to ``CACHE/accuracy/report.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_common import (
    CACHE,
    busy_processes,
    conditions,
    phantom,
    record,
    row,
    row_note,
)
from myonode_config import load_yaml

from dicom_node.phantom.study import PhantomOptions
from inference.evaluate import evaluate, summarize

CASES: dict[str, PhantomOptions] = {
    "low-siemens-3": PhantomOptions(seed=21, infiltration="low", vendor="siemens", stacks=3),
    "low-philips-2": PhantomOptions(seed=22, infiltration="low", vendor="philips", stacks=2),
    "low-ge-1": PhantomOptions(seed=23, infiltration="low", vendor="ge", stacks=1),
    "high-philips-enhanced-3": PhantomOptions(seed=24, infiltration="high", vendor="philips-enhanced", stacks=3),
    "high-siemens-1": PhantomOptions(seed=25, infiltration="high", vendor="siemens", stacks=1),
    "high-ge-2": PhantomOptions(seed=26, infiltration="high", vendor="ge", stacks=2),
}
DICE_GOAL = {"low": 0.95, "high": 0.90}
BIAS_GOAL_PP = 0.5
LOA_GOAL_PP = 1.5


def process_case(name: str, dicom: Path, out: Path, device: str, pipeline: Path | None) -> dict:
    """Run ``myonode process`` on one study; its wall time and its CPU time (user + system)."""
    command = [sys.executable, "-m", "dicom_node.cli", "process", str(dicom), "--out", str(out),
               "--device", device]
    if pipeline is not None:
        command += ["--config", str(pipeline)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{name}: myonode process failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{name}: processed in {wall:.1f} s (CPU {cpu:.1f} s)", flush=True)
    return {"wall_s": wall, "cpu_s": cpu}


def linked_set(root: Path, names: list[str], source: dict[str, Path]) -> Path:
    """A folder of case subfolders (symlinks), as ``evaluate`` reads a test set."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).symlink_to(source[name], target_is_directory=True)
    return root


def score(pred: dict[str, Path], truth: dict[str, Path], names: list[str]) -> dict:
    """``evaluate``'s report for the cases ``names`` (each case scored once)."""
    with tempfile.TemporaryDirectory() as tmp:
        return evaluate(linked_set(Path(tmp) / "pred", names, pred),
                        linked_set(Path(tmp) / "truth", names, truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model package (default: the shipped one)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--record", action="store_true", help="add the row to BENCHMARKS.md")
    args = parser.parse_args()

    cond = conditions()
    busy = busy_processes()
    work = CACHE / "accuracy"
    work.mkdir(parents=True, exist_ok=True)
    pipeline = None
    if args.model is not None:
        pipeline = work / "pipeline.yaml"
        settings = load_yaml(None, "pipeline.yaml")  # the embedded defaults, another model
        settings["model"] = str(args.model.resolve())
        pipeline.write_text(yaml.safe_dump(settings))
    truth, pred, times = {}, {}, {}
    for name, options in CASES.items():
        dicom = phantom(f"accuracy-{name}", options)
        truth[name] = dicom.parent / "truth"
        pred[name] = work / "pred" / name
        times[name] = process_case(name, dicom, pred[name], args.device, pipeline)

    overall = score(pred, truth, list(CASES))
    by_level = {level: summarize([c for c in overall["cases"] if CASES[c["case"]].infiltration == level])
                for level in DICE_GOAL}
    model = json.loads((pred[next(iter(CASES))] / "results.json").read_text())["model"]
    (work / "report.json").write_text(json.dumps(
        {"model": model, "times": times, "by_level": by_level, "all": overall}, indent=2))

    print(f"\nmodel {model['name']} {model['version']}\n")
    print(f"{'muscle':8s} {'Dice low':>9s} {'Dice high':>10s}")
    for code in by_level["low"]["mean_dice_by_muscle"]:
        low = by_level["low"]["mean_dice_by_muscle"].get(code)
        high = by_level["high"]["mean_dice_by_muscle"].get(code)
        print(f"{code:8s} {_f(low):>9s} {_f(high):>10s}")
    cells = [f"{model['name']} {model['version']}", args.device]
    for level, goal in DICE_GOAL.items():
        per_muscle = {c: v for c, v in by_level[level]["mean_dice_by_muscle"].items() if v is not None}
        mean = sum(per_muscle.values()) / len(per_muscle)
        worst = min(per_muscle, key=per_muscle.get)
        verdict = "met" if mean >= goal else f"MISSED by {goal - mean:.2f}"
        print(f"{level}: mean Dice per muscle {mean:.3f} (worst {worst} {per_muscle[worst]:.3f}); goal >= {goal}: {verdict}")
        cells.append(f"{mean:.3f} (worst {worst} {per_muscle[worst]:.2f}); >= {goal}: {verdict}")
    summary = overall["summary"]
    bias, loa = summary["ff_bias_pct"], summary["ff_loa_pct"]
    ok = abs(bias) <= BIAS_GOAL_PP and max(abs(loa[0]), abs(loa[1])) <= LOA_GOAL_PP
    verdict = "met" if ok else "MISSED"
    print(f"FF% vs truth over {summary['n']} muscle-sides: bias {bias:+.2f} pp, 95% LoA "
          f"[{loa[0]:+.2f}, {loa[1]:+.2f}]; goal |bias| <= {BIAS_GOAL_PP}, LoA within +-{LOA_GOAL_PP}: {verdict}")
    cells.append(f"{bias:+.2f} [{loa[0]:+.2f}, {loa[1]:+.2f}] (n {summary['n']}); {verdict}")
    wall = {n: t["wall_s"] for n, t in times.items()}
    cells.append(", ".join(f"{n} {w:.0f} s" for n, w in wall.items()))
    cells.append(row_note([], busy) or "busy at start: nothing else")
    if args.record:
        record("accuracy", [row(cond, cells)])


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
