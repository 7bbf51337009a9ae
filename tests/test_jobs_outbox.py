"""Jobs and the outbox, part by part: a real pipeline child, a real storescp as the PACS."""

from pathlib import Path

import pydicom
import pytest
from node_helpers import Receiver, free_port
from state_helpers import Clock, result_files, started_job

from dicom_node.node.state import State
from dicom_node.send.outbox import Outbox, RetryPolicy, versioned_description
from dicom_node.send.scu import Peer
from dicom_node.serve.jobs import JobWorker


def test_back_off_doubles_to_the_maximum_then_gives_up():
    policy = RetryPolicy(initial_s=10, max_s=60, give_up_after_s=300)
    created = 1000.0
    delays = [policy.next_attempt(n, created, created) - created for n in range(5)]
    assert delays == [10, 20, 40, 60, 60]
    # the last attempt is placed at the deadline, after it the delivery is dead
    assert policy.next_attempt(3, created, created + 290) == created + 300
    assert policy.next_attempt(4, created, created + 300) is None


def test_versions_are_marked_in_the_series_description():
    assert versioned_description("myonode thigh muscles stack 0", 1) == \
        "myonode thigh muscles stack 0"
    assert versioned_description("myonode thigh muscles stack 0", 3) == \
        "myonode thigh muscles stack 0 v3"
    assert len(versioned_description("x" * 64, 12)) == 64


@pytest.fixture()
def state(tmp_path):
    s = State.in_data_dir(tmp_path / "data")
    yield s
    s.close()


def test_results_are_stored_labelled_and_delivered_once(tmp_path, state):
    receiver = Receiver(tmp_path / "pacs", free_port()).start()
    try:
        peer = Peer("pacs", receiver.ae_title, "127.0.0.1", receiver.port)
        outbox = Outbox(state, tmp_path / "data" / "outbox", {"pacs": peer}, "MYONODE")
        job = started_job(state)
        state.record_instance(job.study_uid, "x", "late.1", "1.2.840.10008.5.1.4.1.1.4", "/x")
        job = state.job(job.id)
        items = outbox.store_results(job, result_files(tmp_path / "results"))
        assert all(Path(i["path"]).parent == tmp_path / "data" / "outbox" / f"job-{job.id}"
                   for i in items)
        assert outbox.commit(job, items) == "sending"
        assert outbox.run_once() == 3
        assert outbox.run_once() == 0  # nothing left: nothing sent twice
        assert state.job(job.id).state == "done"
        uids = receiver.sop_instance_uids()
        assert sorted(uids) == sorted(i["sop_instance_uid"] for i in items)
        assert {d.state for d in state.deliveries(job.id)} == {"sent"}
    finally:
        receiver.stop()


def test_second_versions_carry_v2(tmp_path, state):
    first = started_job(state)
    state.fail_job(first.id, "processing", "test")
    outcome = state.record_instance(first.study_uid, "s", "new.1", "1.2.840.10008.5.1.4.1.1.4",
                                    "/x")
    assert outcome.version == 2
    state.queue_job(outcome.job_id, "complete")
    second = state.claim_next_job()
    outbox = Outbox(state, tmp_path / "outbox", {}, "MYONODE")
    [item] = outbox.store_results(second, result_files(tmp_path / "r", 1))
    assert pydicom.dcmread(item["path"]).SeriesDescription == "myonode thigh muscles stack 0 v2"
    assert outbox.commit(second, [item]) == "done"  # no destination: kept in the outbox
    assert state.job(second.id).note.startswith("no destination configured")


def test_a_destination_that_is_down_gets_back_off_then_a_dead_letter_then_a_resend(
        tmp_path, state):
    clock = Clock(1_000_000.0)
    port = free_port()  # nobody listens yet
    outbox = Outbox(state, tmp_path / "outbox", {"pacs": Peer("pacs", "PACS", "127.0.0.1", port)},
                    "MYONODE", RetryPolicy(initial_s=10, max_s=20, give_up_after_s=45),
                    clock=clock)
    job = started_job(state)
    outbox.commit(job, outbox.store_results(job, result_files(tmp_path / "r", 2)))
    attempts_at = []
    for _ in range(12):
        if state.due_deliveries(now=clock()):
            attempts_at.append(clock.now - 1_000_000)
        outbox.run_once()
        clock.now += 5
    # attempts at 0, 10, 30 (doubling, capped at 20 s), then at the 45 s deadline: dead
    assert attempts_at == [0, 10, 30, 45]
    dead = state.deliveries(job.id, state="dead")
    assert len(dead) == 2
    assert f"cannot connect to PACS@127.0.0.1:{port}: [Errno 111] Connection refused" in \
        dead[0].last_error, dead[0].last_error
    assert state.job(job.id).state == "failed"
    receiver = Receiver(tmp_path / "pacs", port).start()
    try:
        assert state.resend(None, ["pacs"], dead_letters_only=True, now=clock()) == 2
        assert outbox.run_once() == 2
        assert state.job(job.id).state == "done"
        assert len(receiver.files()) == 2
    finally:
        receiver.stop()


def test_a_destination_removed_from_the_config_dead_letters_its_deliveries(tmp_path, state):
    job = started_job(state)
    before = Outbox(state, tmp_path / "outbox", {"old": Peer("old", "OLD", "127.0.0.1", 1)},
                    "MYONODE")
    before.commit(job, before.store_results(job, result_files(tmp_path / "r", 1)))
    after = Outbox(state, tmp_path / "outbox", {}, "MYONODE")
    after.run_once()
    [dead] = state.deliveries(job.id)
    assert dead.state == "dead" and "not configured any more" in dead.last_error


def receive(state, paths):
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        outcome = state.record_instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                        str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(path))
    return outcome.job_id


def test_the_worker_runs_the_pipeline_in_a_child_and_fills_the_outbox(
        tmp_path, state, tiny_pipeline, small_study):
    outbox = Outbox(state, tmp_path / "data" / "outbox", {}, "MYONODE")
    worker = JobWorker(state, tmp_path / "data", outbox, pipeline_config=tiny_pipeline)
    job_id = receive(state, small_study)
    state.queue_job(job_id, "complete")
    job = worker.run_once()
    assert job.state == "done", job.error
    assert job.input_count == len(small_study) and job.attempts == 1
    inputs = list((worker.job_dir(job_id) / "input").iterdir())
    assert len(inputs) == len(small_study)
    items = state.outbox_items(job_id)
    assert sorted(i.kind for i in items) == ["seg", "seg", "sr"]
    seg = pydicom.dcmread(next(i.path for i in items if i.kind == "seg"))
    assert seg.StudyInstanceUID == pydicom.dcmread(small_study[0]).StudyInstanceUID
    assert "Segmentation" in seg.SOPClassUID.name
    assert (worker.job_dir(job_id) / "attempt-1" / "process.log").stat().st_size > 0
    assert worker.run_once() is None  # queue empty


def test_a_failed_job_keeps_inputs_and_error_and_can_be_retried(
        tmp_path, state, tiny_pipeline, small_study):
    outbox = Outbox(state, tmp_path / "data" / "outbox", {}, "MYONODE")
    worker = JobWorker(state, tmp_path / "data", outbox, pipeline_config=tiny_pipeline)
    water_only = [p for p in small_study if p.parent.name.endswith("_W")]
    job_id = receive(state, water_only[:3])
    state.queue_job(job_id, "quiet_period")
    job = worker.run_once()
    assert job.state == "failed" and job.failed_stage == "processing"
    assert "log:" in job.error and job.error.split(" (log:")[0], job.error
    assert len(list((worker.job_dir(job_id) / "input").iterdir())) == 3
    assert "queued" in state.retry_job(job_id)
    again = worker.run_once()
    assert again.id == job_id and again.attempts == 2 and again.state == "failed"
    assert (worker.job_dir(job_id) / "attempt-2" / "process.log").exists()
