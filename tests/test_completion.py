"""When a study counts as arrived: complete stacks, the quiet period, the maximum wait."""

import shutil
from pathlib import Path

import pydicom
import pytest

from dicom_node.node.state import State
from dicom_node.phantom.study import PhantomOptions, make_phantom
from dicom_node.serve.completion import CompletionMonitor, judge, read_facts
from dicom_node.study.dixon_roles import DixonRules

RULES = DixonRules.load()


@pytest.fixture(scope="module")
def philips_enhanced(tmp_path_factory):
    out = tmp_path_factory.mktemp("enhanced")
    make_phantom(out, PhantomOptions(stacks=2, slices=8, matrix=48, vendor="philips-enhanced"))
    return sorted((out / "dicom").rglob("*.dcm"))


def verdict(paths):
    facts = [read_facts(p, RULES) for p in paths]
    facts = [f for f in facts if f is not None]
    study = next(f.frames[0].study_instance_uid for f in facts if f.frames)
    return judge(study, facts)


def by_series(paths):
    series = {}
    for path in paths:
        series.setdefault(path.parent.name, []).append(path)
    return series


def test_a_whole_study_is_complete(small_study, philips_enhanced):
    assert verdict(small_study).complete
    assert verdict(philips_enhanced).complete


def test_a_missing_middle_slice_is_seen(small_study):
    water = next(v for k, v in sorted(by_series(small_study).items()) if k.endswith("_W"))
    result = verdict([p for p in small_study if p != water[3]])
    assert not result.complete
    assert any("missing slice" in r for r in result.reasons), result.reasons


def test_a_missing_role_is_seen(small_study):
    fat = {p for k, v in by_series(small_study).items() if k.endswith("_1_F") for p in v}
    result = verdict([p for p in small_study if p not in fat])
    assert not result.complete and "stack 0: no fat images" in result.reasons


def test_the_last_slices_missing_in_every_role_are_caught_by_images_in_acquisition(small_study):
    # The stack just looks shorter: only the header count tells the slices are still due.
    last = set()
    for name, paths in by_series(small_study).items():
        if "_2_" in name:
            last.add(max(paths, key=lambda p: pydicom.dcmread(p).InstanceNumber))
    result = verdict([p for p in small_study if p not in last])
    assert not result.complete
    assert [r for r in result.reasons if "ImagesInAcquisition" in r], result.reasons
    assert not [r for r in result.reasons if "missing slice" in r]


def test_a_count_over_all_series_of_an_acquisition_is_accepted(tmp_path, small_study):
    # Vendors that count every image of the acquisition (all roles together) in (0020,1002).
    stack0 = [p for p in small_study if "_1_" in p.parent.name]
    copies = []
    for path in stack0:
        ds = pydicom.dcmread(path)
        ds.ImagesInAcquisition = len(stack0)
        target = tmp_path / path.name.replace(".dcm", f"_{path.parent.name}.dcm")
        ds.save_as(target)
        copies.append(target)
    assert verdict(copies).complete


def test_enhanced_frames_must_match_number_of_frames(tmp_path, philips_enhanced):
    ds = pydicom.dcmread(philips_enhanced[0])
    ds.NumberOfFrames = int(ds.NumberOfFrames) + 4
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed)
    result = verdict([changed, *philips_enhanced[1:]])
    assert any("NumberOfFrames 36 but 32 per-frame" in r for r in result.reasons), result.reasons


def test_no_dixon_images_is_not_complete(tmp_path, small_study):
    ds = pydicom.dcmread(small_study[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SeriesDescription = "localizer"
    ds.save_as(tmp_path / "loc.dcm")
    facts = [read_facts(tmp_path / "loc.dcm", RULES)]
    assert judge(str(ds.StudyInstanceUID), facts).reasons == ["no Dixon stack yet"]
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not dicom at all")
    assert read_facts(garbage, RULES) is None


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def receive(state, clock, paths, spool):
    """Record files as the SCP would (copies in a spool folder)."""
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = spool / f"{ds.SOPInstanceUID}.dcm"
        shutil.copy(path, target)
        state.record_instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                              str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(target),
                              now=clock())
    return str(ds.StudyInstanceUID)


@pytest.fixture()
def node(tmp_path):
    state = State.in_data_dir(tmp_path)
    clock = Clock()
    queued = []
    monitor = CompletionMonitor(state, RULES, quiet_period_s=10, max_wait_s=60,
                                on_queued=queued.append, clock=clock)
    spool = tmp_path / "spool"
    spool.mkdir()
    yield state, monitor, clock, spool, queued
    state.close()


def test_release_of_a_complete_study_queues_it_at_once(node, small_study):
    state, monitor, clock, spool, queued = node
    study = receive(state, clock, small_study, spool)
    assert monitor.tick() == []  # no release yet, not quiet yet
    monitor.released([study])
    clock.now += 1
    [(job, trigger)] = monitor.tick()
    assert trigger == "complete" and queued == [job]
    assert state.job(job).state == "queued"


def test_an_incomplete_study_waits_for_the_quiet_period(node, small_study):
    state, monitor, clock, spool, _ = node
    study = receive(state, clock, small_study[:-5], spool)
    monitor.released([study])
    clock.now += 2
    assert monitor.tick() == []
    clock.now += 9.5  # 11.5 s after the last instance
    [(_, trigger)] = monitor.tick()
    assert trigger == "quiet_period"


def test_a_trickling_sender_is_cut_off_at_the_maximum_wait(node, small_study):
    state, monitor, clock, spool, _ = node
    for path in small_study[:20]:
        receive(state, clock, [path], spool)
        clock.now += 5  # never quiet for 10 s
        if monitor.tick():
            break
    assert state.jobs()[0].trigger == "max_wait"
    assert clock.now - state.jobs()[0].created_at >= 60


def test_instances_after_queueing_open_a_new_version(node, small_study):
    state, monitor, clock, spool, _ = node
    study = receive(state, clock, small_study[:-1], spool)
    clock.now += 11
    [(first, _)] = monitor.tick()
    state.claim_next_job(now=clock())
    receive(state, clock, small_study[-1:], spool)
    monitor.released([study])
    clock.now += 1
    [(second, trigger)] = monitor.tick()
    assert trigger == "complete"  # the new version's study (all instances) is complete
    assert state.job(second).version == 2 and second != first


def test_headers_are_read_once_per_file(node, small_study, monkeypatch):
    from dicom_node.serve import completion

    state, monitor, clock, spool, _ = node
    reads = []
    original = completion.read_facts
    monkeypatch.setattr(completion, "read_facts",
                        lambda path, rules: reads.append(path) or original(path, rules))
    study = receive(state, clock, small_study[:10], spool)
    monitor.released([study])
    monitor.tick()
    receive(state, clock, small_study[10:20], spool)
    monitor.released([study])
    monitor.tick()
    assert len(reads) == 20 and len(set(reads)) == 20


def test_the_monitor_thread_queues_without_ticks_from_outside(node, small_study):
    import time

    state, monitor, clock, spool, queued = node
    study = receive(state, clock, small_study, spool)
    monitor.tick_s = 0.05
    monitor.start()
    try:
        monitor.released([study])
        deadline = time.monotonic() + 10
        while not queued and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        monitor.stop()
    assert queued and not monitor.alive()
    assert Path(state.path).exists()
