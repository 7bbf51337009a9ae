"""Encode time of the DICOM-SEGs and the SR of a full-size study (issue 4 benchmark).

The study is the reference protocol: 3 stacks of 140 slices at 384x384 (a phantom made with
``make_phantom`` if the folder holds none), 18 muscles x 2 sides. Timed, in memory:
``build_segmentations`` (one SEG per stack) and ``build_report`` (the SR), for each SEG type;
then pydicom writing them (``save_as`` into memory), which ``myonode process`` also pays.
The first run of a process is reported apart: it loads highdicom's standard tables.

    python benchmarks/encode_seg_sr.py [--study /tmp/myonode-bench] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from common.muscles import load_muscles
from dicom_node.phantom.study import PhantomOptions, make_phantom
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.scan import scan_folder
from dicom_node.study.stacks import group_studies
from dicom_node.study.stitch import plan_stitch, stitch
from inference.fat_fraction import ff_from_water_fat
from inference.quantify import quantify
from reporting.seg import ModelInfo, build_segmentations, load_reporting_config
from reporting.sr import build_report

MODEL = ModelInfo("phantom-model", "0.1", "Not for clinical use: benchmark.")


def load(folder: Path) -> tuple:
    """Study, stitched grid, truth labels and results.json content of the benchmark study."""
    if not (folder / "truth" / "labels.nii.gz").is_file():
        make_phantom(folder, PhantomOptions())
    study = group_studies(scan_folder(folder / "dicom", DixonRules.load()).frames)[0]
    grid = plan_stitch(study.stacks).geometry
    labels = np.asarray(nib.load(folder / "truth" / "labels.nii.gz").dataobj)
    labels = np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint8)
    images = stitch(study, roles=["water", "fat"]).images
    ff = ff_from_water_fat(images["water"], images["fat"])
    q = quantify(labels, ff, grid.spacing, load_muscles().combined_labels())
    results = {
        "study_instance_uid": study.study_instance_uid,
        "overall_ff_pct": q.overall.ff_mean_pct,
        "muscles": [m.to_dict() for m in q.muscles],
    }
    return study, grid, labels, results


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def write_all(datasets: list) -> int:
    size = 0
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        size += buffer.tell()
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=Path("/tmp/myonode-bench"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    study, grid, labels, results = load(args.study)
    print(
        f"study: {len(study.stacks)} stacks, grid {grid.shape}, "
        f"{len(np.unique(labels)) - 1} segments"
    )
    report: dict = {}
    first = True
    for kind in ("BINARY", "LABELMAP"):
        config = replace(load_reporting_config(), segmentation_type=kind)
        seg_times, sr_times, write_times = [], [], []
        for _ in range(args.repeat + (1 if first else 0)):
            segs, seg_s = timed(build_segmentations, study, labels, grid, MODEL, config)
            sr, sr_s = timed(build_report, study, segs, results, MODEL, config)
            size, write_s = timed(write_all, [*segs, sr])
            if first:  # highdicom loads its standard tables on first use
                report["first_call_s"] = {"seg": seg_s, "sr": sr_s}
                first = False
                continue
            seg_times.append(seg_s)
            sr_times.append(sr_s)
            write_times.append(write_s)
        frames = [int(s.NumberOfFrames) for s in segs]
        report[kind] = {
            "frames_per_seg": frames,
            "bytes_written": size,
            "seg_s": {"best": min(seg_times), "median": statistics.median(seg_times)},
            "sr_s": {"best": min(sr_times), "median": statistics.median(sr_times)},
            "seg_plus_sr_s": min(a + b for a, b in zip(seg_times, sr_times)),
            "write_s": {"best": min(write_times), "median": statistics.median(write_times)},
        }
        print(
            f"{kind:8s} frames {frames}  SEG {min(seg_times):.2f} s  SR {min(sr_times):.2f} s  "
            f"SEG+SR {report[kind]['seg_plus_sr_s']:.2f} s  "
            f"write {min(write_times):.2f} s ({size / 1e6:.0f} MB)  (best of {args.repeat})"
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
