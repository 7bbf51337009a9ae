"""Every failed delivery attempt records what the destination really did (PS3.8 terms), and
the dead letter keeps it: real DCMTK storescp and Orthanc as the refusing destinations."""

import os
import socket
import subprocess

import pytest
from node_helpers import Orthanc, _port_open, free_port, wait_for
from peers import _find, mr_dataset
from state_helpers import Clock, started_job

from dicom_node.node.state import State
from dicom_node.send.outbox import Outbox, RetryPolicy
from dicom_node.send.scu import Peer, send_files

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR Storage

# A storescp association profile (DCMTK's storescp.cfg format) accepting MR and SEG, not SR.
NO_SR_PROFILE = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[[PresentationContexts]]
[NoSR]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = MRImageStorage\\Uncompressed
PresentationContext3 = SegmentationStorage\\Uncompressed
[[Profiles]]
[NoSR]
PresentationContexts = NoSR
"""


def dcmtk_storescp():
    tool = _find("dcmtk", "storescp")
    if tool is None:
        message = "DCMTK storescp not found (apt-get install dcmtk)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return str(tool)


class Storescp:
    """DCMTK's storescp with extra options, as a destination that refuses in some way."""

    def __init__(self, folder, *options):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = open(folder / "storescp.log", "ab")  # noqa: SIM115 - open while it runs
        self.process = subprocess.Popen(
            [dcmtk_storescp(), "-aet", "PACS", "-od", str(folder), *options, str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: _port_open(self.port), 30, f"storescp on port {self.port}")

    def peer(self, ae_title="PACS"):
        return Peer("pacs", ae_title, "127.0.0.1", self.port)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def instance(folder, name, sop_class=None):
    ds = mr_dataset()
    if sop_class is not None:  # an instance of that SOP class as far as negotiation goes
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SeriesDescription = "myonode test result"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def state(tmp_path):
    s = State.in_data_dir(tmp_path / "data")
    yield s
    s.close()


def test_a_destination_refusing_the_sr_says_so_on_every_attempt_and_in_the_dead_letter(
        tmp_path, state):
    profile = tmp_path / "nosr.cfg"
    profile.write_text(NO_SR_PROFILE)
    pacs = Storescp(tmp_path / "pacs", "-xf", str(profile), "NoSR")
    try:
        clock = Clock(1_000_000.0)
        outbox = Outbox(state, tmp_path / "data" / "outbox", {"pacs": pacs.peer()}, "MYONODE",
                        RetryPolicy(initial_s=10, max_s=20, give_up_after_s=45), clock=clock)
        job = started_job(state)
        files = [("seg", instance(tmp_path / "r", "seg")),
                 ("sr", instance(tmp_path / "r", "sr", SR_CLASS))]
        outbox.commit(job, outbox.store_results(job, files))
        kinds = {item.id: item.kind for item in state.outbox_items(job.id)}
        errors = []
        for _ in range(12):
            if state.due_deliveries(now=clock()):
                outbox.run_once()
                [sr] = [d for d in state.deliveries(job.id) if kinds[d.outbox_id] == "sr"]
                errors.append(sr.last_error)
            clock.now += 5
        assert {kinds[d.outbox_id]: d.state for d in state.deliveries(job.id)} == \
            {"seg": "sent", "sr": "dead"}
        assert len(errors) == 4  # attempts at 0, 10, 30 and 45 s (the last one dead)
        for error in errors:  # the first attempt (SEG and SR) and those of the SR alone
            assert f"presentation context for SOP class {SR_CLASS} (Comprehensive SR " \
                   "Storage) refused: result 3 (abstract-syntax-not-supported" in error, errors
        assert "accepted no presentation context" in errors[-1]
        [dead] = state.deliveries(job.id, state="dead")
        assert dead.last_error == errors[-1]
        assert state.job(job.id).state == "failed"
    finally:
        pacs.stop()


def test_a_rejected_association_is_recorded_with_result_source_and_reason(tmp_path):
    path = instance(tmp_path / "r", "mr")
    refusing = Storescp(tmp_path / "refusing", "--refuse")
    try:
        [outcome] = send_files(refusing.peer(), [path], "MYONODE")
    finally:
        refusing.stop()
    assert not outcome.stored
    assert outcome.error == (
        f"association rejected by PACS@127.0.0.1:{refusing.port}: A-ASSOCIATE-RJ result 1 "
        "(rejected-permanent), source 1 (DICOM UL service-user), reason 1 (no-reason-given)")
    orthanc = Orthanc(tmp_path / "orthanc", free_port()).start()
    try:
        [wrong_called] = send_files(Peer("o", "NOT-ORTHANC", "127.0.0.1", orthanc.dicom_port),
                                    [path], "MYONODE")
        [unknown_calling] = send_files(Peer("o", "ORTHANC", "127.0.0.1", orthanc.dicom_port),
                                       [path], "STRANGER")
    finally:
        orthanc.stop()
    assert "reason 7 (called-AE-title-not-recognized)" in wrong_called.error
    assert "reason 3 (calling-AE-title-not-recognized)" in unknown_calling.error


def test_an_abort_and_a_silent_destination_are_told_apart(tmp_path):
    path = instance(tmp_path / "r", "mr")
    aborting = Storescp(tmp_path / "aborting", "--abort-after")
    try:
        [outcome] = send_files(aborting.peer(), [path], "MYONODE")
    finally:
        aborting.stop()
    assert outcome.error == ("no C-STORE response: aborted by the destination: A-ABORT, "
                             "source 0 (DICOM UL service-user)")
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        [outcome] = send_files(Peer("x", "PACS", "127.0.0.1", port), [path], "MYONODE",
                               timeout_s=1)
    assert outcome.error == (f"no answer from PACS@127.0.0.1:{port} to the association "
                             "request within 1 s (ACSE timeout)")
