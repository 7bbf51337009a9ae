"""A study whose instances name more than one patient is held, never processed as one: with
the reason in the log and in ``myonode status``, until a person releases it."""

import logging

import pydicom
import pytest
import yaml
from hostile_headers import write
from state_helpers import Clock, receive

from dicom_node.cli import main
from dicom_node.node.state import State
from dicom_node.serve.completion import CompletionMonitor
from dicom_node.study.dixon_roles import DixonRules

RULES = DixonRules.load()


@pytest.fixture()
def node(tmp_path):
    state = State.in_data_dir(tmp_path / "data")
    clock = Clock()
    monitor = CompletionMonitor(state, RULES, quiet_period_s=10, max_wait_s=60, clock=clock)
    spool = tmp_path / "spool"
    spool.mkdir()
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"node": {"data_dir": str(tmp_path / "data")}}))
    yield state, monitor, clock, spool, config
    state.close()


def changed(paths, folder, series_suffix=None, **values):
    """Copies of ``paths`` with the attributes ``values``."""
    copies = []
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        copies.append(write(ds, folder / f"{path.parent.name}-{path.name}"))
    return copies


def test_two_patient_ids_hold_the_study_until_a_person_releases_it(
        node, small_study, tmp_path, caplog, capsys):
    state, monitor, clock, spool, config = node
    other = set(small_study[40:])  # the last series name someone else
    files = small_study[:40] + changed(sorted(other), tmp_path, PatientID="OTHER-PATIENT")
    study = receive(state, clock, files, spool)
    monitor.released([study])
    clock.now += 1
    with caplog.at_level(logging.ERROR, logger="myonode.completion"):
        assert monitor.tick() == []  # complete by its stacks, but not one patient
    [job] = state.jobs()
    assert job.state == "held"
    assert job.error.startswith("instances of more than one patient: 2 different PatientID")
    assert "OTHER-PATIENT" not in job.error  # no identifiers in the log or the status
    [held] = [r for r in caplog.records if r.getMessage().startswith("study.held")]
    assert f"job_id={job.id}" in held.getMessage()
    clock.now += 3600  # neither the quiet period nor the maximum wait releases it
    assert monitor.tick() == [] and state.job(job.id).state == "held"

    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "held studies" in out and f"job {job.id} {study}" in out
    assert "2 different PatientID values" in out

    assert main(["release", str(job.id), "--config", str(config)]) == 0
    released = state.job(job.id)
    assert released.state == "queued" and released.trigger == "released"
    assert "2 different PatientID" in released.note
    monitor.tick()
    assert state.job(job.id).state == "queued"  # a person's decision stands
    assert main(["release", str(job.id), "--config", str(config)]) == 2


def test_the_quiet_period_does_not_queue_a_study_of_two_issuers(node, small_study, tmp_path):
    state, monitor, clock, spool, _ = node
    files = small_study[:8] + changed(small_study[8:16], tmp_path, IssuerOfPatientID="OTHER")
    receive(state, clock, files, spool)
    clock.now += 11
    assert monitor.tick() == []
    [job] = state.jobs()
    assert job.state == "held" and "IssuerOfPatientID" in job.error


def test_names_are_compared_as_names_and_birth_dates_exactly(node, small_study, tmp_path):
    state, monitor, clock, spool, _ = node
    name = str(pydicom.dcmread(small_study[0]).PatientName)
    files = small_study[:8] + changed(small_study[8:16], tmp_path,
                                      PatientName=name.lower() + "^^")
    receive(state, clock, files, spool)
    clock.now += 11
    [(job, trigger)] = monitor.tick()
    assert trigger == "quiet_period"  # the same name, written differently
    state.claim_next_job()
    late = changed(small_study[16:24], tmp_path, PatientBirthDate="19000101")
    receive(state, clock, late, spool)  # version 2: every instance so far
    clock.now += 11
    assert monitor.tick() == []
    second = state.jobs()[0]
    assert second.version == 2 and second.state == "held"
    assert "PatientBirthDate" in second.error and "PatientName" not in second.error


def test_another_patient_joining_a_queued_version_holds_it(node, small_study, tmp_path):
    state, monitor, clock, spool, _ = node
    study = receive(state, clock, small_study, spool)
    monitor.released([study])
    clock.now += 1
    [(job, _)] = monitor.tick()
    assert state.job(job).state == "queued"  # waiting for the worker, inputs not fixed
    receive(state, clock, changed(small_study[:1], tmp_path, PatientID="OTHER",
                                  SOPInstanceUID=pydicom.uid.generate_uid()), spool)
    monitor.tick()
    assert state.job(job).state == "held"
    assert state.claim_next_job() is None


def test_process_refuses_a_folder_whose_study_names_two_patients(small_study, tmp_path, capsys):
    """Also the backstop of the node: an instance that joins a job as its inputs are fixed."""
    folder = tmp_path / "study"
    folder.mkdir()
    for path in small_study[:40]:
        (folder / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    changed(sorted(small_study[40:]), folder, PatientID="OTHER-PATIENT")
    assert main(["process", str(folder), "--out", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err.strip()
    assert "is not one patient's: instances of more than one patient: 2 different PatientID" in message
    assert "OTHER-PATIENT" not in message
    assert not (tmp_path / "out").exists()
