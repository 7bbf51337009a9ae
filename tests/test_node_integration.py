"""The node with real peers: a scanner (DCMTK/dcm4che storescu) -> myonode (``serve`` in a
subprocess) -> Orthanc as the PACS; Orthanc as the sender; versions; defaults; status."""

import json
import signal
import subprocess
import sys
import urllib.request
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from node_helpers import (
    NodeProcess,
    Orthanc,
    free_port,
    pipeline_yaml,
    tiny_model,
    wait_for,
)
from peers import scu_peer

from dicom_node.phantom.study import PhantomOptions, make_phantom

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def phantom_files(folder: Path, seed: int) -> list[Path]:
    make_phantom(folder, PhantomOptions(seed=seed, stacks=2, slices=8, matrix=48))
    return sorted((folder / "dicom").rglob("*.dcm"))


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    """Orthanc (PACS and second sender) and a node that delivers to it."""
    root = tmp_path_factory.mktemp("integration")
    pipeline = pipeline_yaml(root, tiny_model(root / "tiny"))
    node_port = free_port()
    orthanc = Orthanc(root / "orthanc", node_port).start()
    node = NodeProcess(root / "node", pipeline, port=node_port, destinations=[
        {"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
         "port": orthanc.dicom_port}])
    try:
        node.start()
        yield root, orthanc, node
    finally:
        node.stop()
        orthanc.stop()


def finished_jobs(node: NodeProcess, study_uid: str, count: int) -> list:
    """The study's jobs once there are ``count`` and none is unfinished."""
    def ready():
        jobs = [j for j in node.jobs() if j["study_uid"] == study_uid]
        finished = len(jobs) == count and all(j["state"] in ("done", "failed") for j in jobs)
        return jobs if finished else None

    try:
        return wait_for(ready, 180, f"{count} finished job(s) of {study_uid}", interval_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {[dict(j) for j in node.jobs()]}\n"
                             + node.log_path.read_text()[-3000:]) from None


def orthanc_file(orthanc: Orthanc, instance_id: str) -> pydicom.Dataset:
    with urllib.request.urlopen(orthanc.url(f"/instances/{instance_id}/file"), timeout=30) as r:
        return pydicom.dcmread(BytesIO(r.read()))


def results_in_orthanc(orthanc: Orthanc, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    found = orthanc.post("/tools/find", json.dumps({
        "Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}).encode())
    by_class: dict[str, list] = {}
    for instance_id in found:
        ds = orthanc_file(orthanc, instance_id)
        by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
    return by_class


def source_uids(files: list[Path]) -> tuple[str, dict[str, set[str]]]:
    """Study UID and series UID -> SOP instance UIDs of the files sent."""
    series: dict[str, set[str]] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series.setdefault(str(ds.SeriesInstanceUID), set()).add(str(ds.SOPInstanceUID))
    return str(ds.StudyInstanceUID), series


def check_references(segs, sr, series: dict[str, set[str]]) -> None:
    """Each SEG references images of one sent series; the SR references the SEGs and sources."""
    referenced_series = []
    for seg in segs:
        [ref] = seg.ReferencedSeriesSequence
        assert ref.SeriesInstanceUID in series
        referenced = {i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence}
        assert referenced and referenced <= series[ref.SeriesInstanceUID]
        referenced_series.append(ref.SeriesInstanceUID)
    assert len(set(referenced_series)) == len(segs)  # one source series per stack
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for ser in study.ReferencedSeriesSequence for item in ser.ReferencedSOPSequence
    }
    assert {str(s.SOPInstanceUID) for s in segs} <= evidence
    assert evidence - {str(s.SOPInstanceUID) for s in segs} <= set().union(*series.values())


def test_scanner_to_node_to_orthanc(peers, tmp_path):
    _, orthanc, node = peers
    files = phantom_files(tmp_path / "study", seed=1)
    study_uid, series = source_uids(files)
    run = scu_peer().store(files, node.port, calling="SCANNER")
    assert run.returncode == 0, run.output
    [job] = finished_jobs(node, study_uid, 1)
    assert job["state"] == "done", dict(job)
    assert job["trigger"] == "complete"  # released with complete stacks: no quiet period
    results = results_in_orthanc(orthanc, study_uid)
    segs, [sr] = results[SEG_CLASS], results[SR_CLASS]
    assert len(segs) == 2 and sorted(s.SeriesDescription for s in segs) == [
        "myonode thigh muscles stack 0", "myonode thigh muscles stack 1"]
    check_references(segs, sr, series)
    deliveries = node.query("SELECT state, COUNT(*) n FROM deliveries GROUP BY state")
    assert {r["state"]: r["n"] for r in deliveries}.get("pending", 0) == 0

    status = node.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["node"]["running"] and report["node"]["dicom_port"] == node.port
    assert report["outbox"]["orthanc"]["sent"] >= 3
    text = node.cli("status").stdout
    assert "orthanc" in text and "done" in text and "complete" in text

    code, body = node.http("/metrics")
    assert code == 200 and b'myonode_jobs{state="done"}' in body
    assert b'myonode_deliveries{destination="orthanc",state="sent"}' in body
    code, body = node.http("/healthz")
    health = json.loads(body)
    assert code == 200 and health["checks"]["job_worker"]["ok"], health


def test_orthanc_as_the_sender(peers, tmp_path):
    _, orthanc, node = peers
    files = phantom_files(tmp_path / "study", seed=2)
    study_uid, series = source_uids(files)
    for path in files:
        orthanc.upload(path)
    [study_id] = [r["ID"] for r in orthanc.post("/tools/lookup", study_uid.encode())
                  if r["Type"] == "Study"]
    orthanc.post("/modalities/myonode/store",
                 json.dumps({"Resources": [study_id], "Synchronous": True}).encode())
    [job] = finished_jobs(node, study_uid, 1)
    assert job["state"] == "done", dict(job)
    results = results_in_orthanc(orthanc, study_uid)
    assert len(results[SEG_CLASS]) == 2 and len(results[SR_CLASS]) == 1
    check_references(results[SEG_CLASS], results[SR_CLASS][0], series)
    assert job["input_count"] == len(files)


def test_a_late_stack_makes_version_2(peers, tmp_path):
    _, orthanc, node = peers
    files = phantom_files(tmp_path / "study", seed=3)
    study_uid, series = source_uids(files)
    first_stack = [p for p in files if "_1_" in p.parent.name]
    second_stack = [p for p in files if "_2_" in p.parent.name]
    peer = scu_peer()
    assert peer.store(first_stack, node.port, calling="SCANNER").returncode == 0
    [v1] = finished_jobs(node, study_uid, 1)
    assert v1["state"] == "done" and v1["version"] == 1
    assert peer.store(second_stack, node.port, calling="SCANNER").returncode == 0
    v2 = finished_jobs(node, study_uid, 2)[1]
    assert v2["state"] == "done" and v2["version"] == 2 and v2["input_count"] == len(files)
    results = results_in_orthanc(orthanc, study_uid)
    descriptions = sorted(str(s.SeriesDescription) for s in results[SEG_CLASS])
    assert descriptions == ["myonode thigh muscles stack 0",
                            "myonode thigh muscles stack 0 v2",
                            "myonode thigh muscles stack 1 v2"]
    assert sorted(str(s.SeriesDescription) for s in results[SR_CLASS]) == [
        "myonode muscle fat fraction", "myonode muscle fat fraction v2"]
    seg_series = {str(s.SeriesInstanceUID) for s in results[SEG_CLASS]}
    assert len(seg_series) == 3  # every version has series of its own
    v2_sr = next(s for s in results[SR_CLASS] if str(s.SeriesDescription).endswith("v2"))
    v2_segs = [s for s in results[SEG_CLASS] if str(s.SeriesDescription).endswith("v2")]
    check_references(v2_segs, v2_sr, series)
    studies = json.loads(node.cli("status", "--json").stdout)["studies"]
    assert next(s for s in studies if s["study_uid"] == study_uid)["latest_version"] == 2


def test_serve_runs_on_embedded_defaults(tmp_path):
    """No config at all: AE MYONODE on 11112, data in ./myonode-data, a warning that results
    stay in the outbox."""
    import socket

    for port in (11112, 9090):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is in use on this machine")
    process = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "serve"],
                               cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        runtime = tmp_path / "myonode-data" / "node.json"
        info = wait_for(lambda: runtime.exists() and json.loads(runtime.read_text()), 60,
                        "the node on defaults")
        assert info["dicom_port"] == 11112 and info["ae_title"] == "MYONODE"
        echo = scu_peer().echo(11112, calling="ANYONE", called="MYONODE")
        assert echo.returncode == 0, echo.output
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    warning = next(e for e in events if e["event"] == "outbox.no_destination")
    assert warning["level"] == "warning" and "stay in the outbox" in warning["message"]
    assert (tmp_path / "myonode-data" / "state.sqlite3").exists()
    assert not runtime.exists()  # removed at a clean stop
