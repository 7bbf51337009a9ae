"""Studies of echo images only: recognition of each flavour's echo magnitude and phase frames,
phase scaling to radians, stacks and derived in/out-of-phase roles, completion and inspect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from common.geometry import VolumeGeometry
from common.study import echo_role, parse_echo_role
from dicom_node.cli import main
from dicom_node.phantom.attributes import StudyInfo
from dicom_node.phantom.writer import StackImages, write_study
from dicom_node.serve.completion import judge, read_facts
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.pixels import phase_radians
from dicom_node.study.scan import frames_of, read_header, scan_folder
from dicom_node.study.stacks import group_studies
from dicom_node.study.stitch import stitch

RULES = DixonRules.load()
INFO = StudyInfo(
    patient_name="PHANTOM^ECHOES", patient_id="E1", birth_date="19700101", sex="O",
    study_instance_uid="1.2.826.0.1.3680043.8.498.1", study_date="20260101",
    study_time="080000", accession="E1", frame_of_reference_uid="1.2.826.0.1.3680043.8.498.2",
)
ECHO_TIMES = {"siemens": (3.45, 4.60, 5.75), "ge": (2.2, 4.4)}
PHASES = (-3.0, -0.1, 2.9)  # radians, one per echo (the last near the wrap)


def echo_stacks(vendor: str, n_stacks: int = 2, phases: bool = True,
                slices: int = 6) -> list[StackImages]:
    """Constant echo images: magnitude 100 x echo number, phase ``PHASES``; stacks overlap."""
    stacks = []
    for index in range(n_stacks):
        geometry = VolumeGeometry((slices, 16, 16), (4.0, 2.0, 2.0),
                                  (-15.0, -15.0, 12.0 * index), (1, 0, 0), (0, 1, 0), (0, 0, 1))
        images = {}
        for number, te in enumerate(ECHO_TIMES[vendor]):
            images[echo_role("echo_magnitude", te)] = np.full(geometry.shape, 100.0 * (number + 1),
                                                              np.float32)
            if phases:
                images[echo_role("echo_phase", te)] = np.full(geometry.shape, PHASES[number],
                                                              np.float32)
        stacks.append(StackImages(geometry, images))
    return stacks


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, list[Path]]:
    """A 2-stack echo study with phases per vendor that exports echoes."""
    found = {}
    for vendor in ECHO_TIMES:
        folder = tmp_path_factory.mktemp(vendor)
        found[vendor] = write_study(folder, vendor, INFO, echo_stacks(vendor),
                                    np.random.default_rng(3))
    return found


def only_study(folder_or_paths) -> object:
    if isinstance(folder_or_paths, Path):
        frames = scan_folder(folder_or_paths, RULES).frames
    else:
        frames = [f for p in folder_or_paths for f in frames_of(read_header(p), p, RULES)]
    [study] = group_studies(frames)
    return study


# --- recognition -----------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", sorted(ECHO_TIMES))
def test_every_echo_frame_is_recognised_with_its_echo_time(written, vendor):
    seen = set()
    for path in written[vendor]:
        ds = read_header(path)
        [frame] = frames_of(ds, path, RULES)
        expected = "echo_phase" if "phase" in _kind(ds) else "echo_magnitude"
        assert frame.role == expected, (path, ds.ImageType)
        assert frame.echo_time_ms in ECHO_TIMES[vendor]
        assert frame.echo_number == ECHO_TIMES[vendor].index(frame.echo_time_ms) + 1
        seen.add(frame.stack_role)
    assert seen == {echo_role(kind, te) for te in ECHO_TIMES[vendor]
                    for kind in ("echo_magnitude", "echo_phase")}


def _kind(ds: Dataset) -> str:
    """What the writer meant: GE's private image type, else the ImageType's P."""
    try:
        code = int(ds.private_block(0x0043, "GEMS_PARM_01")[0x2F].value)
    except KeyError:
        code = 1 if "P" in ds.ImageType else 0
    return "phase" if code == 1 else "magnitude"


def header(image_type, manufacturer="SIEMENS", scanning="GR", description="") -> Dataset:
    ds = Dataset()
    ds.ImageType = image_type
    ds.Manufacturer = manufacturer
    ds.SeriesDescription = description
    if scanning:
        ds.ScanningSequence = scanning
    return ds


def ge(ds: Dataset, code: int) -> Dataset:
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x2F, "SS", code)
    return ds


VARIANTS = [
    ("siemens magnitude", header(["ORIGINAL", "PRIMARY", "M", "ND"]), "echo_magnitude"),
    ("siemens normalised magnitude", header(["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"]),
     "echo_magnitude"),
    ("siemens phase", header(["ORIGINAL", "PRIMARY", "P", "ND"]), "echo_phase"),
    ("siemens phase with inversion", header(["ORIGINAL", "PRIMARY", "P", "ND"],
                                            scanning=["GR", "IR"]), "echo_phase"),
    ("ge magnitude", ge(header(["ORIGINAL", "PRIMARY", "OTHER"], "GE MEDICAL SYSTEMS"), 0),
     "echo_magnitude"),
    ("ge phase", ge(header(["ORIGINAL", "PRIMARY", "OTHER"], "GE MEDICAL SYSTEMS"), 1),
     "echo_phase"),
    ("ge real part", ge(header(["ORIGINAL", "PRIMARY", "OTHER"], "GE MEDICAL SYSTEMS"), 2), None),
    ("philips magnitude", header(["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"], "Philips"),
     "echo_magnitude"),
    ("philips phase map", header(["ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"], "Philips"),
     "echo_phase"),
    ("spin echo magnitude", header(["ORIGINAL", "PRIMARY", "M", "NORM"], scanning="SE"), None),
    ("gradient echo localizer", header(["ORIGINAL", "PRIMARY", "M", "ND"],
                                       description="localizer"), None),
    ("scanner in-phase stays in_phase", header(["DERIVED", "PRIMARY", "DIXON", "IN_PHASE"]),
     "in_phase"),
    ("opp description wins over echo", header(["ORIGINAL", "PRIMARY", "M", "ND"],
                                              description="t1_vibe_dixon_tra_opp"),
     "out_of_phase"),
]


@pytest.mark.parametrize("label, ds, role", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_echo_header_variants(label, ds, role):
    assert RULES.roles(ds) == [role]


def enhanced_frame(component: str, echo_time: float) -> Dataset:
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "T1", "NONE"]
    frame_type.ComplexImageComponent = component
    echo = Dataset()
    echo.EffectiveEchoTime = echo_time
    group = Dataset()
    group.MRImageFrameTypeSequence = Sequence([frame_type])
    group.MREchoSequence = Sequence([echo])
    return group


def test_enhanced_mr_echo_frames_by_complex_component_and_echo_sequence():
    ds = Dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "T1", "MIXED"]
    ds.Manufacturer = "Philips Medical Systems"
    ds.EchoPulseSequence = "GRADIENT"
    ds.NumberOfFrames = 3
    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        enhanced_frame("MAGNITUDE", 2.3), enhanced_frame("PHASE", 2.3),
        enhanced_frame("REAL", 4.6)])
    assert RULES.roles(ds) == ["echo_magnitude", "echo_phase", None]
    ds.EchoPulseSequence = "SPIN"
    assert RULES.roles(ds) == [None, None, None]


def test_an_echo_image_without_echo_time_gets_no_role(written, tmp_path):
    ds = pydicom.dcmread(written["siemens"][0])
    del ds.EchoTime
    path = tmp_path / "no_te.dcm"
    ds.save_as(path)
    [frame] = frames_of(pydicom.dcmread(path), path, RULES)
    assert frame.role is None and frame.echo_time_ms is None


# --- phase scaling ---------------------------------------------------------------------------


def phase_header(bits=12, signed=0, slope=None, intercept=None, unit=None, manufacturer="SIEMENS"):
    ds = Dataset()
    ds.Manufacturer = manufacturer
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, bits, signed
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if unit is not None:
        ds.RescaleType = unit
    return ds


@pytest.mark.parametrize("label, ds, values, expected", [
    ("siemens 0..4095", phase_header(), [0, 2048, 1024, 4095],
     [-np.pi, 0.0, -np.pi / 2, np.pi - 2 * np.pi / 4096]),
    ("siemens slope 2 intercept -4096", phase_header(slope=2, intercept=-4096),
     [-4096, 0, 2048, 4094], [-np.pi, 0.0, np.pi / 2, np.pi - np.pi / 2048]),
    ("siemens signed -4096..4095", phase_header(bits=13, signed=1), [-4096, 0, 4095],
     [-np.pi, 0.0, np.pi - np.pi / 4096]),
    ("ge milliradians", phase_header(bits=16, signed=1, manufacturer="GE MEDICAL SYSTEMS"),
     [-3142, 0, 1571, 3141], [np.pi - 0.000815, 0.0, 1.571, 3.141]),
    ("philips mrad", phase_header(slope=1.53455, intercept=-3142, unit="mrad",
                                  manufacturer="Philips"), [-3142, 0, 1000], [np.pi - 0.000815,
                                                                               0.0, 1.0]),
    ("radians", phase_header(unit="RAD"), [-3.0, 0.5, 3.2], [-3.0, 0.5, 3.2 - 2 * np.pi]),
])
def test_phase_values_become_radians(label, ds, values, expected):
    radians = phase_radians(np.asarray(values, dtype=np.float32), ds, None)
    assert np.all((radians >= -np.pi) & (radians < np.pi))
    # compare on the circle: -pi and pi are the same phase
    assert np.allclose(np.angle(np.exp(1j * (radians - np.asarray(expected)))), 0, atol=1e-3)


@pytest.mark.parametrize("vendor, step", [("siemens", 2 * np.pi / 4096), ("ge", 1e-3)])
def test_written_phases_come_back_in_radians(written, vendor, step):
    study = only_study(written[vendor])
    images = stitch(study).images
    for te, phase in zip(ECHO_TIMES[vendor], PHASES):
        back = images[echo_role("echo_phase", te)]
        assert np.allclose(np.angle(np.exp(1j * (back - phase))), 0, atol=step)
    # magnitudes share one scale: the echo ratios survive the stored integers and the gains
    first = images[echo_role("echo_magnitude", ECHO_TIMES[vendor][0])]
    last = images[echo_role("echo_magnitude", ECHO_TIMES[vendor][-1])]
    assert np.allclose(last / first, len(ECHO_TIMES[vendor]), rtol=2e-3)


# --- stacks and derived roles ----------------------------------------------------------------


@pytest.mark.parametrize("vendor", sorted(ECHO_TIMES))
def test_echo_stacks_take_in_and_out_of_phase_from_the_earliest_echoes(written, vendor):
    study = only_study(written[vendor])
    assert len(study.stacks) == 2 and study.warnings == []
    field = {"siemens": 3.0, "ge": 1.5}[vendor]
    assert study.field_strength_t == field
    expected = {"siemens": {"out_of_phase": 3.45, "in_phase": 4.60},
                "ge": {"out_of_phase": 2.2, "in_phase": 4.4}}[vendor]
    for stack in study.stacks:
        assert stack.echo_set and stack.missing_roles() == []
        assert stack.echo_times_ms() == list(ECHO_TIMES[vendor])
        assert stack.echo_times_ms("echo_phase") == list(ECHO_TIMES[vendor])
        assert {r: parse_echo_role(s)[1] for r, s in stack.derived.items()} == expected
        assert stack.roles["in_phase"] is stack.roles[stack.derived["in_phase"]]


def test_all_echoes_in_one_series_give_the_same_stacks(written, tmp_path):
    """Siemens may put every echo of a stack in one series, told apart by EchoTime."""
    paths = []
    for path in written["siemens"]:
        ds = pydicom.dcmread(path)
        station = path.parent.name.split("_")[3]  # <number>_dixon3pt_tra_<station>_TE_...
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.10.{station}"
        target = tmp_path / station / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(exist_ok=True)
        ds.save_as(target)
        paths.append(target)
    one_series = only_study(tmp_path)
    per_echo = only_study(written["siemens"])
    assert [sorted(s.roles) for s in one_series.stacks] == [sorted(s.roles) for s in
                                                            per_echo.stacks]
    assert {len(set(s.series.values())) for s in one_series.stacks} == {1}


def test_field_strength_from_the_imaging_frequency(written, tmp_path):
    for path in written["siemens"]:
        ds = pydicom.dcmread(path)
        del ds.MagneticFieldStrength
        ds.save_as(tmp_path / path.name.replace(".dcm", f"_{ds.SeriesNumber}.dcm"))
    study = only_study(tmp_path)
    assert study.field_strength_t == pytest.approx(2.89, abs=0.01)  # 123.25 MHz / 42.577
    assert set(study.stacks[0].derived) == {"in_phase", "out_of_phase"}


def test_scanner_in_phase_images_are_not_replaced_by_echoes(written, tmp_path):
    """A study with the scanner's IP/OP and the echoes: the scanner's images stay."""
    stacks = echo_stacks("siemens", n_stacks=1, phases=False)
    echoes = write_study(tmp_path, "siemens", INFO, stacks, np.random.default_rng(1))
    geometry = stacks[0].geometry
    scanner = {r: np.full(geometry.shape, 50.0, np.float32)
               for r in ("water", "fat", "in_phase", "out_of_phase")}
    paths = []
    for path in write_study(tmp_path / "scanner", "siemens", INFO,
                            [StackImages(geometry, scanner)], np.random.default_rng(2)):
        ds = pydicom.dcmread(path)  # UIDs of their own: the writer numbers both exports alike
        ds.SeriesInstanceUID += ".9"
        ds.SOPInstanceUID += ".9"
        ds.save_as(path)
        paths.append(path)
    [stack] = only_study([*echoes, *paths]).stacks
    assert stack.derived == {} and stack.echo_set
    assert stack.series["in_phase"] != stack.series[echo_role("echo_magnitude", 4.6)]


# --- completion ------------------------------------------------------------------------------


def verdict(paths):
    facts = [f for f in (read_facts(p, RULES) for p in paths) if f is not None]
    return judge(INFO.study_instance_uid, facts)


def echo_of(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).EchoTime)


def test_an_echo_study_is_complete(written):
    for vendor in ECHO_TIMES:
        result = verdict(written[vendor])
        assert result.complete, (vendor, result.reasons)


def test_the_first_echo_alone_is_not_complete(written):
    first = [p for p in written["siemens"] if echo_of(p) == 3.45]
    result = verdict(first)
    assert not result.complete
    assert any("make no Dixon set yet" in r and "3.45 (out_of_phase)" in r
               for r in result.reasons), result.reasons


def test_an_in_and_an_out_of_phase_echo_are_enough(written):
    assert verdict([p for p in written["siemens"] if echo_of(p) != 5.75]).complete
    # two out-of-phase echoes are not a set
    assert not verdict([p for p in written["siemens"] if echo_of(p) != 4.6]).complete


def test_a_missing_echo_slice_is_seen(written):
    magnitudes = sorted(p for p in written["siemens"] if echo_of(p) == 5.75
                        and "P" not in pydicom.dcmread(p, stop_before_pixels=True).ImageType)
    result = verdict([p for p in written["siemens"] if p != magnitudes[2]])
    assert not result.complete
    assert any("echo_magnitude_5.75ms: 1 missing slice" in r for r in result.reasons)


def test_a_lone_gradient_echo_series_beside_a_dixon_stack_is_left_out(written, tmp_path):
    lone = [StackImages(VolumeGeometry((5, 16, 16), (4.0, 2.0, 2.0), (-15.0, -15.0, 200.0),
                                       (1, 0, 0), (0, 1, 0), (0, 0, 1)),
                        {echo_role("echo_magnitude", 3.45): np.ones((5, 16, 16), np.float32)})]
    extra = write_study(tmp_path, "siemens", INFO, lone, np.random.default_rng(4))
    study = only_study([*written["siemens"], *extra])
    assert len(study.stacks) == 2  # the Dixon set only
    assert len(study.incomplete_echoes) == 1
    assert not verdict([*written["siemens"], *extra]).complete  # may still be arriving


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_shows_echoes_echo_times_and_field_strength(written, capsys):
    folder = written["siemens"][0].parent.parent
    assert main(["inspect", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [study] = report["studies"]
    for stack in study["stacks"]:
        assert stack["field_strength_t"] == 3.0
        assert stack["derived"] == {"in_phase": "echo_magnitude_4.60ms",
                                    "out_of_phase": "echo_magnitude_3.45ms"}
        assert [(e["echo_time_ms"], e["echo_number"], e["class"], e["used_as"])
                for e in stack["echoes"]] == [
            (3.45, 1, "out_of_phase", "out_of_phase"), (4.6, 2, "in_phase", "in_phase"),
            (5.75, 3, "out_of_phase", None)]
        assert all(e["magnitude"] and e["phase"] for e in stack["echoes"])
    assert main(["inspect", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "3 echoes at 3 T:" in text
    assert "echo 2, TE 4.60 ms (in_phase): magnitude + phase; used as in_phase" in text
    assert "echo 3, TE 5.75 ms (out_of_phase): magnitude + phase\n" in text


def test_an_echo_set_without_an_in_phase_echo_takes_the_nearest(tmp_path):
    """Six echoes 1.3 ms apart at 1.5 T (the seed's protocol): none is in phase."""
    times = (1.36, 2.66, 3.96, 5.26, 6.56, 7.86)
    frames = []
    for path in write_study(tmp_path, "siemens", INFO, echo_stacks("siemens", 1, phases=False),
                            np.random.default_rng(5)):
        ds = read_header(path)
        ds.EchoTime = times[[3.45, 4.6, 5.75].index(float(ds.EchoTime)) * 2]
        ds.MagneticFieldStrength = 1.5
        frames += frames_of(ds, path, RULES)
    [study] = group_studies(frames)
    [stack] = study.stacks
    assert stack.echo_set
    assert stack.derived == {"in_phase": "echo_magnitude_3.96ms",
                             "out_of_phase": "echo_magnitude_6.56ms"}
    assert any("no in_phase echo at 1.5 T" in w and "the 3.96 ms echo" in w
               for w in study.warnings), study.warnings


def test_phases_are_taken_from_one_stack_never_blended(tmp_path):
    stacks = echo_stacks("siemens")
    offsets = (0.0, 2.0)  # each acquisition has its own phase offset
    for stack, offset in zip(stacks, offsets):
        for role in stack.images:
            if role.startswith("echo_phase"):
                stack.images[role] = np.angle(np.exp(1j * (stack.images[role] + offset))).astype(
                    np.float32)
    study = only_study(write_study(tmp_path, "siemens", INFO, stacks, np.random.default_rng(6)))
    stitched = stitch(study)
    phase = stitched.images[echo_role("echo_phase", 3.45)]
    expected = [np.angle(np.exp(1j * (PHASES[0] + offset))) for offset in offsets]
    per_slice = phase[:, 8, 8]
    step = 2 * np.pi / 4096
    from_stack = [int(np.argmin([abs(np.angle(np.exp(1j * (v - e)))) for e in expected]))
                  for v in per_slice]
    assert all(min(abs(np.angle(np.exp(1j * (v - e)))) for e in expected) <= step
               for v in per_slice)
    assert from_stack == sorted(from_stack) and set(from_stack) == {0, 1}
    assert any(len(entries) == 2 for entries in stitched.plan.sources)  # the stacks overlap
