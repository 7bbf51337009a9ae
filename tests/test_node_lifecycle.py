"""The node's start and end as an operator sees them: a taken port is named with its setting,
the job's child dies with a node killed by ``kill -9`` even while it is still importing, and
``myonode status`` shows the step a job is at."""

import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from node_helpers import NodeProcess, wait_for
from peers import scu_peer
from state_helpers import started_job

from dicom_node.node.config import load_node_config
from dicom_node.node.state import State
from dicom_node.serve.commands import format_status, node_status
from dicom_node.serve.progress import ProgressWriter

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def serve(node: NodeProcess) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicom_node.cli", "serve", "--config",
                           str(node.config)], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("listener", ["dicom", "http"])
def test_a_taken_port_is_named_with_the_setting_to_change(tmp_path, tiny_pipeline, listener):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = NodeProcess(tmp_path, tiny_pipeline, port=port if listener == "dicom" else 0,
                           **({"http": {"port": port}} if listener == "http" else {}))
        done = serve(node)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    if listener == "dicom":
        assert last == (f"myonode serve: cannot listen on DICOM port {port} on 127.0.0.1: "
                        "address already in use; change node.port in the config")
    else:
        assert last == (f"myonode serve: cannot listen on metrics/health HTTP port {port} on "
                        "127.0.0.1: address already in use; change http.port in the config "
                        "(0 switches the endpoint off)")
    assert not (node.data_dir / "node.json").exists()


def test_a_mistake_in_the_pipeline_file_stops_the_node_at_start(tmp_path):
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("device: gpu\n", encoding="utf-8")
    node = NodeProcess(tmp_path / "node", pipeline)
    done = serve(node)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"myonode serve: {pipeline}: device: must be one of auto, cpu, cuda, got 'gpu'"]
    assert not (node.data_dir / "node.json").exists()


def _subreaper(on: bool) -> None:
    """Orphans of this process's descendants become its children (so their exit status can
    be read), or no longer."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _job_child(node: NodeProcess) -> int | None:
    """The node's job child once it runs ``dicom_node.serve.jobs`` (after exec)."""
    for pid in node.children():
        try:
            if b"dicom_node.serve.jobs" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux parent-death signal")
def test_the_job_child_dies_with_a_node_killed_while_the_child_still_imports(
        tmp_path, small_study, tiny_pipeline):
    node = NodeProcess(tmp_path, tiny_pipeline, completion={"quiet_period_s": 0.5})
    _subreaper(True)
    child = None
    try:
        node.start()
        sent = scu_peer().store(small_study, node.port)
        assert sent.returncode == 0, sent.output
        child = wait_for(lambda: _job_child(node), 120, "the job's child", interval_s=0.01)
        # Frozen right after its exec, long before its imports end (torch, the pipeline):
        # what happens to it now cannot depend on how fast this machine is.
        os.kill(child, signal.SIGSTOP)
        pidfd = os.pidfd_open(child)
        node.kill(signal.SIGKILL)
        os.kill(child, signal.SIGCONT)
        ended, _, _ = select.select([pidfd], [], [], 120)
        os.close(pidfd)
        assert ended, "the job's child outlived the node"
        _, status = os.waitpid(child, 0)  # it was re-parented to this process
        child = None
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"the child ran on after the node died and exited by itself ({status:#x})")
        assert not (node.data_dir / "outbox").exists()
    finally:
        if child is not None:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        _subreaper(False)
        node.stop()


def test_status_shows_the_step_a_job_in_progress_is_at(tmp_path, tiny_pipeline):
    node = NodeProcess(tmp_path, tiny_pipeline)  # only its config: the node does not run
    state = State.in_data_dir(node.data_dir)
    try:
        job = started_job(state)
    finally:
        state.close()
    attempt = node.data_dir / "jobs" / f"job-{job.id}" / "attempt-1"
    attempt.mkdir(parents=True)
    progress = ProgressWriter(attempt)
    try:
        progress.finish("reading", progress.start("reading"))
        progress.step_done("stitch", 3.2)
        progress.windows("li", 0.4)
    finally:
        progress.close()
    report = node_status(load_node_config(node.config))
    [entry] = report["jobs"]
    assert entry["state"] == "processing"
    assert entry["progress"]["step"] == "segment li" and entry["progress"]["percent"] == 40
    assert "now: segment li 40% (at " in format_status(report)
