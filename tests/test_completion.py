"""When a study counts as arrived: complete stacks, the quiet period, the maximum wait."""

from pathlib import Path

import pydicom
import pytest
from hostile_headers import set_raw, write
from pydicom.uid import generate_uid
from state_helpers import Clock, receive

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


# -- hostile headers, restarts ------------------------------------------------------------------


def other_study(paths, folder, edit=None):
    """Copies of ``paths`` as a study of their own (new UIDs), each changed by ``edit``."""
    study, series = generate_uid(), {}
    copies = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, generate_uid())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if edit is not None:
            edit(ds)
        copies.append(write(ds, folder / f"{ds.SOPInstanceUID}.dcm"))
    return copies


def test_a_hostile_instance_does_not_hold_up_another_study(node, small_study, tmp_path):
    state, monitor, clock, spool, queued = node
    hostile = other_study(small_study[:1], tmp_path,
                          lambda ds: set_raw(ds, "AcquisitionNumber", "IS", b"inf"))
    bad = receive(state, clock, hostile, spool)
    good = receive(state, clock, small_study, spool)
    monitor.released([bad, good])
    clock.now += 1
    assert [state.job(job).study_uid for job, trigger in monitor.tick()] == [good]
    problem = monitor.check(bad).reasons
    assert any("AcquisitionNumber cannot be read" in r for r in problem), problem


def test_number_of_frames_must_be_backed_by_what_is_there(tmp_path, small_study,
                                                          philips_enhanced):
    ds = pydicom.dcmread(small_study[0])  # a 6 KB single-frame image
    ds.NumberOfFrames = 60000
    facts = read_facts(write(ds, tmp_path / "many.dcm"), RULES)
    assert not facts.frames and "NumberOfFrames 60000" in facts.problem
    enhanced = pydicom.dcmread(philips_enhanced[0])
    frames = int(enhanced.NumberOfFrames)
    enhanced.PixelData = enhanced.PixelData[: len(enhanced.PixelData) // 2]
    facts = read_facts(write(enhanced, tmp_path / "half.dcm"), RULES)
    assert not facts.frames
    assert facts.problem == (f"NumberOfFrames {frames} but the pixel data holds "
                             f"{frames // 2} frame(s) at most")


def test_an_unreadable_stored_file_is_a_problem_and_the_others_are_judged(node, small_study,
                                                                         tmp_path):
    state, monitor, clock, spool, queued = node
    good = receive(state, clock, small_study, spool)
    ghost = receive(state, clock, other_study(small_study[:1], tmp_path), spool)
    for _, path in state.study_paths(ghost):
        Path(path).unlink()  # the spooled file went away
        Path(path).mkdir()
    monitor.released([ghost, good])
    clock.now += 1
    assert [state.job(job).study_uid for job, _ in monitor.tick()] == [good]
    assert "no longer readable" in monitor.check(ghost).reasons[-1]


def test_after_a_restart_the_quiet_period_starts_again(tmp_path, small_study):
    state = State.in_data_dir(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    clock = Clock(1000.0)
    receive(state, clock, small_study[:-5], spool)  # the node died here, mid-study
    clock.now = 1000.0 + 3600  # and came back an hour later: past quiet period and max wait
    monitor = CompletionMonitor(state, RULES, quiet_period_s=10, max_wait_s=60, clock=clock)
    assert monitor.tick() == []
    clock.now += 9.5
    assert monitor.tick() == []
    clock.now += 1
    [(job, trigger)] = monitor.tick()
    assert trigger == "quiet_period" and state.job(job).state == "queued"
    state.close()


def test_after_a_restart_the_maximum_wait_starts_again(tmp_path, small_study):
    state = State.in_data_dir(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    clock = Clock(1000.0)
    receive(state, clock, small_study[:1], spool)
    clock.now += 3600
    monitor = CompletionMonitor(state, RULES, quiet_period_s=10, max_wait_s=60, clock=clock)
    for path in small_study[1:12]:  # the sender trickles again after the restart
        clock.now += 5
        receive(state, clock, [path], spool)
        assert monitor.tick() == []
    clock.now += 5
    [(_, trigger)] = monitor.tick()
    assert trigger == "max_wait" and clock.now - monitor.started_at >= 60
    state.close()


def test_a_slice_placed_far_away_makes_no_huge_grid(small_study):
    from dataclasses import replace

    from dicom_node.study.scan import scan_folder
    from dicom_node.study.stacks import MAX_SLICES, find_stacks

    frames = scan_folder(small_study[0].parent.parent, RULES).frames
    far = next(f for f in frames if f.role == "water")
    moved = replace(far, position=(far.position[0], far.position[1], 900_000.0))
    study = find_stacks(far.study_instance_uid, [moved if f is far else f for f in frames])
    assert all(len(slots) <= MAX_SLICES for s in study.stacks for slots in s.roles.values())
    assert any("not used as a stack" in w for w in study.warnings), study.warnings
