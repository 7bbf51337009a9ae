"""Receive throughput: DCMTK ``storescu`` into DCMTK ``storescp`` and into myonode's SCP.

Does the node keep up with a scanner? 400 MR images of 384 x 384 (16 bit; a one-stack
siemens Dixon phantom of 100 slices x 4 roles, 115 MB) are sent over one association, then
over four concurrent ones (four ``storescu`` processes of 100 files each), to:

* DCMTK ``storescp`` writing to a temporary folder (``--fork`` so that it serves concurrent
  associations, ``--max-pdu 131072`` as myonode; it does NOT fsync: on a power cut what it
  acknowledged may be lost);
* ``myonode serve`` (a subprocess, fresh data folder per run) with its durable spool: every
  instance fsynced and renamed and recorded in the state before Success goes back.

With ``--floor`` a third receiver runs: a pynetdicom SCP (in this process, configured as the
node's: pynetdicom defaults, 128 KiB PDUs) whose C-STORE handler does nothing but answer
Success: the most a node built on pynetdicom reaches here, whatever it does with an
instance.

Both tools get ``TCP_NODELAY=1`` (DCMTK otherwise waits for delayed ACKs, ~40x slower). The
time of a run is from starting the senders to the last one exiting (association set-up and
release included); images/s = 400 / that time. Each receiver starts fresh before every run
(not timed). Runs alternate between the receivers; the median of ``--repeat`` runs is
reported. The node's completion quiet period and maximum wait are set to hours, so no job is
queued by time; the study is complete when the last association ends, so a job is queued
then (after the timed run) and ends with the node, which is stopped right away.

    python benchmarks/receive_throughput.py [--repeat 3] [--floor] [--record]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_common import (
    NodeProcess,
    busy_processes,
    conditions,
    dcmtk,
    dicom_files,
    free_port,
    phantom,
    record,
    row,
    row_note,
    wait_port,
)

from dicom_node.phantom.study import PhantomOptions

IMAGES = 400
GOALS = {1: 0.5, 4: 1.0}  # myonode / DCMTK, issue 6
ENV = {**os.environ, "TCP_NODELAY": "1"}


def send(files: list[Path], port: int, associations: int) -> float:
    """Seconds for ``associations`` concurrent storescu processes to send ``files``."""
    storescu = str(dcmtk("storescu"))
    shares = [files[n::associations] for n in range(associations)]
    commands = [[storescu, "-R", "-aet", "BENCH", "-aec", "MYONODE", "127.0.0.1", str(port),
                 *map(str, share)] for share in shares]
    started = time.perf_counter()
    senders = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=ENV) for c in commands]
    outputs = [s.communicate(timeout=600)[0].decode(errors="replace") for s in senders]
    elapsed = time.perf_counter() - started
    for sender, output in zip(senders, outputs):
        if sender.returncode != 0 or "E:" in output:
            raise SystemExit(f"storescu failed ({sender.returncode}):\n{output[-2000:]}")
    return elapsed


def run_dcmtk(files: list[Path], associations: int, work: Path) -> float:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    command = [str(dcmtk("storescp")), "--fork", "--max-pdu", "131072", "-od", str(out),
               str(port)]
    with open(work / "storescp.log", "wb") as log:
        receiver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=ENV)
        try:
            wait_port(port)
            elapsed = send(files, port, associations)
        finally:
            receiver.terminate()
            receiver.wait(timeout=30)
    received = len(dicom_files(out))
    if received != len(files):
        raise SystemExit(f"storescp kept {received} of {len(files)} files")
    return elapsed


def run_myonode(files: list[Path], associations: int, work: Path) -> float:
    node = NodeProcess(work / "node", completion={"quiet_period_s": 36000, "max_wait_s": 72000})
    node.start()
    try:
        wait_port(node.port)
        elapsed = send(files, node.port, associations)
    finally:
        node.stop()
    spooled = len(list((node.data_dir / "spool").rglob("*.dcm")))
    recorded = node.query("SELECT COUNT(*) FROM instances")[0][0]
    if spooled != len(files) or recorded != len(files):
        raise SystemExit(f"myonode spooled {spooled} and recorded {recorded} of {len(files)}")
    return elapsed


def run_pynetdicom_noop(files: list[Path], associations: int, work: Path) -> float:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import MRImageStorage

    ae = AE(ae_title="MYONODE")
    ae.maximum_pdu_size = 131072
    ae.add_supported_context(MRImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        return send(files, port, associations)
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--floor", action="store_true",
                        help="also time a pynetdicom SCP that does nothing (the floor)")
    parser.add_argument("--record", action="store_true", help="add the rows to BENCHMARKS.md")
    parser.add_argument("--note", default="", help="text for the row's note column")
    args = parser.parse_args()
    files = dicom_files(phantom("receive-1x100", PhantomOptions(stacks=1, slices=100,
                                                                matrix=384)))
    if len(files) != IMAGES:
        raise SystemExit(f"expected {IMAGES} files, found {len(files)}")
    cond = conditions()
    busy = busy_processes()
    print(f"load average at start {cond.load}; busy: {', '.join(busy) or 'none'}")
    times: dict[tuple[str, int], list[float]] = {}
    for repeat in range(args.repeat):
        for associations in (1, 4):
            # alternate which receiver goes first, so a load change does not favour one
            order = [("dcmtk", run_dcmtk), ("myonode", run_myonode)]
            if args.floor:
                order.append(("no-op", run_pynetdicom_noop))
            for name, run in order if repeat % 2 == 0 else order[::-1]:
                work = Path(tempfile.mkdtemp(prefix=f"recv-{name}-"))
                try:
                    elapsed = run(files, associations, work)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                times.setdefault((name, associations), []).append(elapsed)
                print(f"run {repeat + 1} {name:8s} {associations} assoc: {elapsed:6.2f} s "
                      f"{len(files) / elapsed:6.1f} img/s", flush=True)
    load_end = "/".join(f"{v:.2f}" for v in os.getloadavg())
    rows = []
    for associations in (1, 4):
        rate = {name: len(files) / statistics.median(runs)
                for (name, n), runs in times.items() if n == associations}
        best = {name: len(files) / min(runs)
                for (name, n), runs in times.items() if n == associations}
        ratio = rate["myonode"] / rate["dcmtk"]
        goal = GOALS[associations]
        verdict = "met" if ratio >= goal else f"MISSED by {(goal - ratio) / goal * 100:.0f}%"
        floor = f"pynetdicom no-op SCP {rate['no-op']:.0f} img/s" if "no-op" in rate else ""
        print(f"{associations} assoc: DCMTK {rate['dcmtk']:.1f} img/s, myonode "
              f"{rate['myonode']:.1f} img/s, ratio {ratio:.2f} (goal >= {goal}: {verdict})"
              + (f"; {floor}" if floor else ""))
        note = row_note([
            (f"median of {args.repeat} (best: DCMTK {best['dcmtk']:.0f}, myonode "
             f"{best['myonode']:.0f})"), floor, f"load at end {load_end}"], busy, args.note)
        rows.append(row(cond, [str(associations), f"{rate['dcmtk']:.1f}",
                               f"{rate['myonode']:.1f}", f"{ratio:.2f}",
                               f">= {goal}: {verdict}", note]))
    print("\n".join(rows))
    if args.record:
        record("receive_throughput", rows)


if __name__ == "__main__":
    main()
