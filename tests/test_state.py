"""The node's SQLite state: versions of a study, job states, deliveries, restarts."""

import sqlite3

import pytest

from dicom_node.node.state import SCHEMA_VERSION, State, StateError

STUDY = "1.2.3"


def record(state, n, study=STUDY, now=100.0, series="1.2.3.1"):
    return state.record_instance(study, series, f"{study}.9.{n}", "1.2.840.10008.5.1.4.1.1.4",
                                 f"/spool/{n}.dcm", calling_ae="SCANNER", now=now)


@pytest.fixture()
def state(tmp_path):
    s = State.in_data_dir(tmp_path)
    yield s
    s.close()


def test_schema_version_and_wal(state, tmp_path):
    assert state.schema_version() == SCHEMA_VERSION
    mode = sqlite3.connect(tmp_path / "state.sqlite3").execute("PRAGMA journal_mode").fetchone()
    assert mode[0] == "wal"


def test_a_newer_schema_is_refused(tmp_path):
    State.in_data_dir(tmp_path).close()
    db = sqlite3.connect(tmp_path / "state.sqlite3")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StateError, match="newer than this myonode"):
        State.in_data_dir(tmp_path)


def test_instances_join_the_open_version_and_repeats_are_idempotent(state):
    first = record(state, 1, now=100)
    assert first.new and first.opened_job and first.version == 1
    second = record(state, 2, now=105)
    assert second.new and not second.opened_job and second.job_id == first.job_id
    again = record(state, 2, now=110)
    assert not again.new and again.job_id == first.job_id
    job = state.job(first.job_id)
    assert job.state == "received" and job.last_instance_at == 110 and job.created_at == 100
    assert state.studies()[0]["instances"] == 2


def test_instances_after_processing_started_open_the_next_version(state):
    first = record(state, 1)
    record(state, 2)
    assert state.queue_job(first.job_id, "complete", now=120)
    assert not state.queue_job(first.job_id, "quiet_period")  # only received jobs are queued
    record(state, 3)  # still queued: joins version 1
    claimed = state.claim_next_job(now=130)
    assert claimed.id == first.job_id and claimed.state == "processing"
    assert claimed.input_count == 3 and claimed.attempts == 1
    late = record(state, 4, now=140)
    assert late.opened_job and late.version == 2
    assert [uid for uid, _ in state.study_paths(STUDY, claimed.input_max_seq)] == [
        f"{STUDY}.9.{n}" for n in (1, 2, 3)]
    assert len(state.study_paths(STUDY)) == 4
    # a repeat of an instance of version 1 does not open a version
    assert record(state, 1, now=150).job_id == late.job_id
    assert state.studies()[0]["latest_version"] == 2


def test_restart_resumes_processing_with_the_same_inputs(tmp_path):
    state = State.in_data_dir(tmp_path)
    job = record(state, 1).job_id
    record(state, 2)
    state.queue_job(job, "quiet_period")
    claimed = state.claim_next_job()
    record(state, 3)  # version 2, not an input of the claimed job
    state.close()
    reopened = State.in_data_dir(tmp_path)
    assert reopened.resume_unfinished() == [job]
    again = reopened.claim_next_job()
    assert again.id == job and again.attempts == 2
    assert again.input_max_seq == claimed.input_max_seq and again.input_count == 2
    reopened.close()


def items(n):
    return [{"sop_instance_uid": f"9.{i}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4",
             "series_uid": "9", "kind": "seg", "path": f"/outbox/{i}.dcm"} for i in range(n)]


def processed_job(state, destinations, n=2):
    job = record(state, 1).job_id
    state.queue_job(job, "complete", now=110)
    state.claim_next_job(now=120)
    state.finish_processing(job, items(n), destinations, now=130)
    return job


def test_deliveries_per_destination_and_instance(state):
    job = processed_job(state, ["pacs", "archive"])
    assert state.job(job).state == "sending"
    due = state.due_deliveries()
    assert len(due) == 4 and {d.destination for d in due} == {"pacs", "archive"}
    for d in due:
        if d.destination == "pacs":
            state.mark_sent(d.outbox_id, "pacs")
    assert state.settle_sending_jobs() == []  # archive still pending
    assert state.delivery_counts()["pacs"] == {"pending": 0, "sent": 2, "dead": 0}
    for d in state.due_deliveries():
        state.mark_sent(d.outbox_id, d.destination)
    assert state.settle_sending_jobs() == [(job, "done")]
    assert state.job(job).state == "done" and state.due_deliveries() == []


def test_no_destination_means_done_with_results_kept(state):
    job = processed_job(state, [])
    done = state.job(job)
    assert done.state == "done" and len(state.outbox_items(job)) == 2
    assert state.deliveries(job) == []


def test_dead_letters_fail_the_job_and_can_be_sent_again(state):
    job = processed_job(state, ["pacs"])
    first, second = state.due_deliveries(now=200)
    state.mark_sent(first.outbox_id, "pacs")
    state.mark_attempt_failed(second.outbox_id, "pacs", "refused", next_attempt_at=500)
    assert state.due_deliveries(now=400) == []
    assert [d.attempts for d in state.due_deliveries(now=500)] == [1]
    state.mark_attempt_failed(second.outbox_id, "pacs", "refused again", next_attempt_at=None)
    assert state.settle_sending_jobs() == [(job, "failed")]
    failed = state.job(job)
    assert failed.failed_stage == "sending" and "1 of 2 deliveries dead" in failed.error
    assert "dead letter" in state.retry_job(job)
    assert state.job(job).state == "sending"
    pending = state.deliveries(job, state="pending")
    assert [d.sop_instance_uid for d in pending] == ["9.1"] and pending[0].attempts == 0
    state.mark_attempt_failed(second.outbox_id, "pacs", "refused", next_attempt_at=None)
    assert state.resend(None, ["pacs"], dead_letters_only=True) == 1
    assert state.job(job).state == "sending"


def test_resend_a_job_sends_everything_again_to_the_configured_destinations(state):
    job = processed_job(state, ["pacs"])
    for d in state.due_deliveries():
        state.mark_sent(d.outbox_id, "pacs")
    state.settle_sending_jobs()
    assert state.resend(job, ["pacs", "archive"], dead_letters_only=False) == 4
    assert state.job(job).state == "sending"
    assert len(state.due_deliveries()) == 4
    with pytest.raises(StateError, match="no job 99"):
        state.resend(99, ["pacs"], dead_letters_only=False)


def test_retry_a_processing_failure_requeues_it(state):
    job = record(state, 1).job_id
    state.queue_job(job, "quiet_period")
    state.claim_next_job()
    state.fail_job(job, "processing", "no Dixon study found")
    failed = state.job(job)
    assert failed.state == "failed" and failed.error == "no Dixon study found"
    assert "queued" in state.retry_job(job)
    assert state.job(job).state == "queued" and state.job(job).trigger == "retry"
    with pytest.raises(StateError, match="not failed"):
        state.retry_job(job)


def test_a_reader_sees_the_writer_s_commits(tmp_path, state):
    record(state, 1)
    reader = State.in_data_dir(tmp_path, read_only=True)
    assert reader.job_counts()["received"] == 1
    record(state, 2, study="4.5.6")
    assert reader.job_counts()["received"] == 2
    reader.close()


def test_read_only_without_a_database_says_so(tmp_path):
    with pytest.raises(StateError, match="has the node run yet"):
        State.in_data_dir(tmp_path / "nothing", read_only=True)
