"""Hostile header values never escape header reading as an exception.

Property: whatever a sender puts into the attributes the node reads (inf, NaN, huge,
negative, text for numbers, numbers for text, binary of any length, wrong VRs, a sequence
that is not one), ``frames_of`` gives frames or raises ValueError with a reason, and
``read_facts``, ``judge`` and ``group_studies`` give their documented results. Frames are
never made for more than the pixel data and the per-frame groups hold. The examples are
derandomized and bounded, so the test is the same on every run.
"""

import copy
import math
import struct
from pathlib import Path

import pydicom
import pytest
from hostile_headers import set_raw, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.study import Frame
from dicom_node.phantom.study import PhantomOptions, make_phantom
from dicom_node.serve.completion import Completeness, InstanceFacts, judge, read_facts
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.scan import frames_of, read_header
from dicom_node.study.stacks import group_studies

RULES = DixonRules.load()
PHILIPS = "Philips MR Imaging DD 001"

# What the node reads, with the VR the standard gives it (None: a private tag, below).
ATTRIBUTES = {
    "NumberOfFrames": "IS", "AcquisitionNumber": "IS", "SeriesNumber": "IS",
    "InstanceNumber": "IS", "ImagesInAcquisition": "IS", "ImagePositionPatient": "DS",
    "ImageOrientationPatient": "DS", "PixelSpacing": "DS", "SliceThickness": "DS",
    "Rows": "US", "Columns": "US", "BitsAllocated": "US", "SamplesPerPixel": "US",
    "EchoTime": "DS", "ImageType": "CS", "FrameType": "CS", "ComplexImageComponent": "CS",
    "SeriesDescription": "LO", "Manufacturer": "LO", "ProtocolName": "LO",
    "SeriesInstanceUID": "UI", "FrameOfReferenceUID": "UI", "StackID": "SH",
    "PatientID": "LO", "IssuerOfPatientID": "LO", "PatientName": "PN",
    "PatientBirthDate": "DA", "PerFrameFunctionalGroupsSequence": "SQ",
    "SharedFunctionalGroupsSequence": "SQ", "PlanePositionSequence": "SQ",
    "PixelMeasuresSequence": "SQ",
}
PRIVATE = {(0x2005, 0x1011): "CS", (0x0043, 0x102F): "SS"}
VRS = ["IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "CS", "LO", "SH", "UI", "PN", "DA",
       "UN", "OB", "OW", "UT", "AT"]

TEXTS = ["inf", "-inf", "nan", "NaN", "1e400", "-1e400", "-1", "0", "-0", "60000",
         "99999999999999999999", "4294967296", "1.5", "", " ", "\\", "1\\2", "1\\2\\3",
         "1\\0\\0\\0\\1\\0", "1\\0\\0\\1\\0\\0", "0\\0\\0\\0\\0\\0", "nan\\nan\\nan",
         "inf\\0\\0\\0\\1\\0", "1e308\\1e308\\1e308", "-1e6\\0\\1e6", "0.001\\1e9",
         "W", "FAT", "ORIGINAL\\PRIMARY\\DIXON\\WATER", "abc", "\x00\x00"]
PACKED = [struct.pack("<d", math.inf), struct.pack("<d", math.nan), struct.pack("<f", -math.inf),
          struct.pack("<d", 1e308), struct.pack("<I", 0xFFFFFFFF), struct.pack("<H", 0),
          struct.pack("<H", 65535), struct.pack("<i", -1), struct.pack("<h", -32768),
          b"\xfe\xff\x00\xe0\xff\xff\xff\xff"]

values = st.one_of(
    st.sampled_from(TEXTS).map(lambda t: t.encode("latin-1")),
    st.sampled_from(PACKED),
    st.binary(max_size=24),
    st.text(alphabet=st.characters(max_codepoint=255), max_size=16).map(
        lambda t: t.encode("latin-1")),
)
targets = st.one_of(st.sampled_from(sorted(ATTRIBUTES)), st.sampled_from(sorted(PRIVATE)))
edits = st.lists(st.tuples(targets, st.sampled_from(VRS) | st.just(None), values,
                           st.integers(0, 3)), min_size=1, max_size=3)


def fuzz(examples: int):
    return settings(derandomize=True, max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


# pydicom warns about each invalid value it meets; here they are the point
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """One single-frame image and one Enhanced MR instance, with the rest of their studies."""
    found = {}
    for vendor in ("siemens", "philips-enhanced"):
        out = tmp_path_factory.mktemp(vendor)
        make_phantom(out, PhantomOptions(stacks=1, slices=4, matrix=16, vendor=vendor))
        paths = sorted((out / "dicom").rglob("*.dcm"))
        others = [f for p in paths[1:] if (f := read_facts(p, RULES)) is not None]
        found[vendor] = (pydicom.dcmread(paths[0]), others)
    return found


def containers(ds):
    """Where an edit may land: the dataset, then the items of its functional groups."""
    found = [ds]
    for keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        for group in ds.get(keyword) or []:
            found.append(group)
            found += [item for element in group if element.VR == "SQ" for item in element.value]
    return found


def hostile(base, changes):
    ds = copy.deepcopy(base)
    places = containers(ds)
    for target, vr, value, where in changes:
        place = places[where % len(places)]
        if isinstance(target, tuple):
            set_raw(place, (target[0], 0x0010), "LO", PHILIPS.encode())
            set_raw(place, target, vr or PRIVATE[target], value)
        else:
            set_raw(place, target, vr or ATTRIBUTES[target], value)
    return ds


def frames_held(base) -> int:
    per_frame = base.get("PerFrameFunctionalGroupsSequence")
    return len(per_frame) if per_frame is not None else 1


def check(tmp_path: Path, base, others, changes) -> None:
    path = write(hostile(base, changes), tmp_path / "hostile.dcm")
    try:
        ds = read_header(path)
    except Exception:  # noqa: BLE001 - a file pydicom cannot parse at all is not judged here
        ds = None
    if ds is not None:
        try:
            frames = frames_of(ds, path, RULES)
        except ValueError as exc:
            assert str(exc), "a problem needs a reason"
        else:
            assert all(isinstance(f, Frame) for f in frames)
            assert 1 <= len(frames) <= frames_held(base)
            for study in group_studies(frames + [f for o in others for f in o.frames]):
                assert all(isinstance(w, str) for w in study.warnings)
    facts = read_facts(path, RULES)
    assert facts is None or isinstance(facts, InstanceFacts)
    if facts is not None:
        assert len(facts.frames) <= frames_held(base)
        assert facts.frames or facts.problem
        study_uid = others[0].frames[0].study_instance_uid if others else ""
        verdict = judge(study_uid, [facts, *others])
        assert isinstance(verdict, Completeness)
        assert verdict.complete or all(isinstance(r, str) and r for r in verdict.reasons)


@fuzz(150)
@given(changes=edits)
def test_hostile_values_in_a_single_frame_image(tmp_path, bases, changes):
    check(tmp_path, *bases["siemens"], changes)


@fuzz(60)
@given(changes=edits)
def test_hostile_values_in_an_enhanced_mr_instance(tmp_path, bases, changes):
    check(tmp_path, *bases["philips-enhanced"], changes)
