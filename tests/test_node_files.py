"""What the running node writes: readable by its user and group only (folders 0750, files
0640, whatever the umask), too-open data folders tightened at start-up, and the job's
progress in the node's own log. ``myonode serve`` runs as a subprocess with real peers."""

import os
import stat
from pathlib import Path

import pytest
from node_helpers import NodeProcess, Receiver, free_port
from peers import scu_peer
from state_helpers import result_files, started_job

from dicom_node.node.permissions import DIR_MODE, FILE_MODE
from dicom_node.node.state import State
from dicom_node.send.outbox import Outbox


def modes(root: Path) -> dict[str, int]:
    """Every folder and file under ``root`` (``root`` included) -> its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


def wrong_modes(root: Path) -> dict[str, str]:
    """What under ``root`` breaks the rule (folders 0750, files 0640), with its mode."""
    return {name: oct(mode) for name, mode in modes(root).items()
            if mode != (DIR_MODE if (root / name).is_dir() else FILE_MODE)}


@pytest.fixture(scope="module")
def processed(tmp_path_factory, small_study, tiny_pipeline):
    """A node started with umask 0 (the most open), which received, processed and
    delivered one study; still running."""
    root = tmp_path_factory.mktemp("node-files")
    receiver = Receiver(root / "pacs", free_port()).start()
    node = NodeProcess(root / "node", tiny_pipeline, destinations=[
        {"name": "pacs", "ae_title": receiver.ae_title, "host": "127.0.0.1",
         "port": receiver.port}], log={"file": str(root / "node" / "data" / "log" / "node.log")})
    try:
        node.start(umask=0)
        sent = scu_peer().store(small_study, node.port)
        assert sent.returncode == 0, sent.output
        node.wait_jobs({"done", "failed"}, timeout_s=300)
        yield node
    finally:
        node.stop()
        receiver.stop()


def test_everything_under_the_data_folder_is_for_the_nodes_user_and_group_only(processed):
    data = processed.data_dir
    [job] = processed.jobs()
    assert job["state"] == "done", dict(job)
    written = modes(data)
    for part in ("spool", "quarantine", "jobs/job-1/input", "jobs/job-1/attempt-1/process.log",
                 "jobs/job-1/attempt-1/sr.dcm", "outbox/job-1", "state.sqlite3",
                 "state.sqlite3-wal", "state.sqlite3-shm", "node.json", "log/node.log"):
        assert part in written, sorted(written)
    assert not wrong_modes(data)


def test_the_nodes_log_carries_the_jobs_progress(processed):
    progress = processed.events("job.progress")
    steps = [(e["step"], e["status"]) for e in progress]
    assert steps[:4] == [("imports", "started"), ("imports", "finished"),
                         ("reading", "started"), ("reading", "finished")], steps
    for step in ("stitch", "segment", "report", "pipeline"):
        assert (step, "finished") in steps, steps
    assert any(status == "running" and step.startswith("segment ") for step, status in steps)
    assert all(e["job_id"] == 1 and e["attempt"] == 1 for e in progress)
    elapsed = [e["elapsed_s"] for e in progress]
    assert elapsed == sorted(elapsed)
    [processed_event] = processed.events("job.processed")
    assert all(e["time"] <= processed_event["time"] for e in progress)  # logged as it ran


def test_too_open_data_folders_and_files_are_tightened_at_start(tmp_path, tiny_pipeline):
    node = NodeProcess(tmp_path / "node", tiny_pipeline)
    data = node.data_dir
    State.in_data_dir(data).close()
    study = data / "spool" / "1.2.3" / "1.2.3.4"
    study.mkdir(parents=True)
    (study / "1.2.3.4.5.dcm").write_bytes(b"left by an earlier version")
    attempt = data / "jobs" / "job-1" / "attempt-1"
    attempt.mkdir(parents=True)
    (attempt / "process.log").write_text("old log")
    for path in (data, data / "spool", study.parent, study, data / "jobs", attempt):
        path.chmod(0o777)
    for path in (study / "1.2.3.4.5.dcm", attempt / "process.log", data / "state.sqlite3"):
        path.chmod(0o666)
    (data / "quarantine").mkdir(mode=0o700)  # stricter than the rule: left as it is
    too_open = set(wrong_modes(data)) - {"quarantine"}
    assert len(too_open) >= 9
    node.start()
    try:
        assert set(wrong_modes(data)) == {"quarantine"}
        assert stat.S_IMODE((data / "quarantine").stat().st_mode) == 0o700
        [tightened] = node.events("data_dir.tightened")
        assert tightened["paths"] == len(too_open)
    finally:
        node.stop()


def test_the_state_and_the_outbox_keep_their_modes_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        state = State.in_data_dir(tmp_path / "data")
        try:
            job = started_job(state)
            outbox = Outbox(state, tmp_path / "data" / "outbox", {}, "MYONODE")
            outbox.commit(job, outbox.store_results(job, result_files(tmp_path / "r", 1)))
            written = modes(tmp_path / "data")  # while the state is open: -wal, -shm
        finally:
            state.close()
    finally:
        os.umask(previous)
    assert {"state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm", "outbox",
            "outbox/job-1"} <= set(written)
    assert not wrong_modes(tmp_path / "data")
