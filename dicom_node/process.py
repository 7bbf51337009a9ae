"""``myonode process``: one Dixon study from DICOM files to labels, FF% per muscle, SEG and SR.

The same function runs a job of the node, so what a user tries on the command line is what
the node does with a received study. Its settings (``config/pipeline.yaml`` or a site file,
``config/reporting.yaml`` and the model package they name) are loaded and checked before the
study is read (:func:`load_settings`), and what would make the SEG impossible before it is
segmented (:func:`reporting.seg.check_reportable`), so a mistake costs seconds, not a run.

A study of echo images only is processed like any other: its echoes are stitched and handed
to the FF methods as an ``EchoSet`` when an echo source comes first in ``fat_fraction.prefer``
(:func:`needs_echoes`), the model gets the echoes that stand in for in/out-of-phase, the SEGs
reference the in-phase echo when there is no water image (:func:`reporting_for`), and
results.json records how the FF was computed (:func:`fat_fraction_record`).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from common.geometry import VolumeGeometry
from common.muscles import load_muscles
from common.study import StudyStacks, parse_echo_role
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.ff_inputs import (
    derived_roles,
    echo_set,
    fat_fraction_record,
    needs_echoes,
    study_echo_roles,
)
from dicom_node.study.patients import patient_mismatch
from dicom_node.study.scan import scan_folder
from dicom_node.study.stacks import group_studies
from dicom_node.study.stitch import stitch
from inference.fat_fraction import fat_fraction_map
from inference.models.package import ModelPackage
from inference.pipeline_config import (
    PipelineConfig,
    load_pipeline_config,
)
from inference.quantify import quantify
from inference.segment import segment
from reporting.seg import (
    ModelInfo,
    ReportingConfig,
    build_segmentations,
    check_reportable,
    load_reporting_config,
)
from reporting.sr import build_report


class Progress:
    """How ``process_study`` reports its steps: as lines on stderr (``myonode process``);
    the node's job child also records them (:class:`dicom_node.serve.progress.ProgressWriter`)."""

    def step_done(self, step: str, at_s: float) -> None:
        """``step`` ended ``at_s`` seconds after the pipeline started."""
        print(f"[{at_s:6.1f} s] {step} done", file=sys.stderr, flush=True)

    def windows(self, model: str, fraction: float) -> None:
        """The sliding window of ``model`` (li, hi) is ``fraction`` done."""
        print(f"           {model}: {fraction * 100:3.0f}%", file=sys.stderr, flush=True)


# Roles the FF map may need, besides the model's inputs.
FF_ROLES = ("water", "fat", "fat_fraction", "in_phase", "out_of_phase")


def shipped_model_path() -> Path:
    """The model package installed with myonode (trained on phantoms only)."""
    from importlib import resources

    return Path(str(resources.files("myonode_models").joinpath("thigh-phantom")))


@dataclass(frozen=True)
class Settings:
    """Everything a run is configured with, checked: pipeline, reporting, model package."""

    pipeline: PipelineConfig
    reporting: ReportingConfig
    package: ModelPackage


def settings_for(pipeline: PipelineConfig) -> Settings:
    """The run's settings for ``pipeline``: the embedded reporting configuration and the model
    package it names (read and validated; its weights load when segmenting)."""
    return Settings(
        pipeline, load_reporting_config(), ModelPackage.load(pipeline.model or shipped_model_path())
    )


def load_settings(config_path: Path | None) -> Settings:
    """The settings of ``myonode process --config`` (None: the embedded defaults); ValueError
    naming the file and key for any mistake."""
    return settings_for(load_pipeline_config(config_path))


@dataclass
class ProcessResult:
    """What one run produced, for the CLI table and for the node's job record."""

    results: dict
    out_dir: Path
    seg_paths: list[Path] = field(default_factory=list)
    sr_path: Path | None = None


def select_study(folder: Path, rules: DixonRules, study_uid: str | None) -> StudyStacks:
    """The one study to process in ``folder`` (or the one named); clear errors otherwise."""
    scan = scan_folder(folder, rules)
    studies = [s for s in group_studies(scan.frames) if s.stacks]
    if study_uid:
        studies = [s for s in studies if s.study_instance_uid == study_uid]
    if not studies:
        detail = f"; skipped: {scan.problems[0]}" if scan.problems else ""
        raise ValueError(f"no Dixon study found in {folder}{detail}")
    if len(studies) > 1:
        uids = ", ".join(s.study_instance_uid for s in studies)
        raise ValueError(f"{len(studies)} studies in {folder} ({uids}); choose one with --study")
    study = studies[0]
    # The node holds such a study before it is queued; this also covers a folder given to
    # `myonode process` and an instance that joined a job as its inputs were fixed.
    frames = {f.sop_instance_uid: f.series_instance_uid for f in scan.frames
              if f.study_instance_uid == study.study_instance_uid}
    mixed = patient_mismatch((series, scan.patients[uid]) for uid, series in frames.items())
    if mixed:
        raise ValueError(f"study {study.study_instance_uid} is not one patient's: {mixed}; "
                         "results would mix patients, so it is not processed")
    return study


def _write_labels(path: Path, labels: np.ndarray, grid: VolumeGeometry) -> None:
    affine = grid.affine_ras_ijk()
    image = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


CSV_FIELDS = (
    "code", "name", "side", "voxels", "volume_ml", "ff_mean_pct", "ff_median_pct", "ff_sd_pct",
    "ff_p25_pct", "ff_p75_pct", "contractile_volume_ml", "core_ff_mean_pct",
)


def _write_csv(path: Path, muscles: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for muscle in muscles:
            writer.writerow({**muscle, "core_ff_mean_pct": muscle["core"]["ff_mean_pct"]})


def format_table(results: dict) -> str:
    """A readable per-muscle table, as printed after processing."""
    lines = [
        f"{'muscle':<32} {'side':<5} {'vol mL':>8} {'FF mean':>8} {'median':>7} {'SD':>6}"
        f" {'contr mL':>9}"
    ]
    for m in results["muscles"]:
        def num(value: float | None, width: int, digits: int) -> str:
            return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

        lines.append(
            f"{m['name'][:24] + ' (' + m['code'] + ')':<32} {m['side']:<5} "
            f"{num(m['volume_ml'], 8, 1)} {num(m['ff_mean_pct'], 8, 1)} "
            f"{num(m['ff_median_pct'], 7, 1)} {num(m['ff_sd_pct'], 6, 1)} "
            f"{num(m['contractile_volume_ml'], 9, 1)}"
        )
    overall = results.get("overall_ff_pct")
    lines.append(f"overall thigh muscle FF: {overall:.1f}%" if overall is not None else "")
    return "\n".join(lines)


def process_study(
    study: StudyStacks,
    out_dir: Path,
    settings: Settings,
    device: str | None = None,
    progress: Progress | None = None,
) -> ProcessResult:
    """Stitch, segment, quantify and report one study; writes every output under ``out_dir``.

    ``settings`` come checked from :func:`load_settings`, before the study was read.
    """
    pipeline, package = settings.pipeline, settings.package
    progress = progress or Progress()
    reporting, reporting_notes = reporting_for(study, settings.reporting)
    check_reportable(study, reporting)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        progress.step_done(name, now - started)
        return now

    t = started
    echo_roles = study_echo_roles(study) if needs_echoes(study, pipeline.ff_prefer) else []
    roles = sorted(set(package.roles) | set(FF_ROLES) | set(echo_roles))
    stitched = stitch(study, roles=roles, match_intensity=pipeline.match_intensity)
    grid = stitched.plan.geometry
    t = step("stitch", t)
    echoes = echo_set(study, stitched.images, echo_roles)
    ff = fat_fraction_map(
        {r: v for r, v in stitched.images.items() if parse_echo_role(r) is None},
        prefer=pipeline.ff_prefer, ff_units=pipeline.ff_units, echoes=echoes,
    )
    t = step("fat_fraction", t)
    last_reported = [-1]

    def window_progress(label: str, fraction: float) -> None:
        tenth = int(fraction * 10)
        if tenth != last_reported[0]:
            last_reported[0] = tenth
            progress.windows(label, fraction)

    segmentation = segment(
        {r: v for r, v in stitched.images.items()
         if r != "fat_fraction" and parse_echo_role(r) is None},
        grid,
        package,
        device=device or pipeline.device,
        ff_pct=ff.ff_pct,
        overlap=pipeline.overlap,
        batch_size=pipeline.batch_size,
        progress=window_progress,
    )
    t = step("segment", t)
    table = load_muscles()
    quant = quantify(
        segmentation.labels,
        ff.ff_pct,
        grid.spacing,
        table.combined_labels(),
        core=pipeline.core,
    )
    muscles = []
    for stats in quant.muscles:
        if stats.voxels == 0:
            continue
        entry = stats.to_dict()
        entry = {"code": entry.pop("code"), "name": table.by_code(stats.code).name, **entry}
        muscles.append(entry)
    t = step("quantify", t)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_labels(out_dir / "labels.nii.gz", segmentation.labels, grid)
    results = {
        "study_instance_uid": study.study_instance_uid,
        "model": {"name": package.name, "version": package.version, "used": segmentation.model,
                  "intended_use": package.intended_use},
        "routing_ff_pct": segmentation.routing_ff_pct,
        "overall_ff_pct": _none_if_nan(quant.overall.ff_mean_pct),
        "fat_fraction_source": ff.source,
        "fat_fraction": fat_fraction_record(study, ff, echoes),
        "derived_roles": derived_roles(study),
        "stitched": {
            "shape": list(grid.shape),
            "spacing_mm": list(grid.spacing),
            "stacks": len(study.stacks),
            "gains": stitched.gains,
        },
        "muscles": muscles,
        "warnings": study.warnings + reporting_notes + stitched.warnings
        + segmentation.warnings,
        "timings_s": timings,
    }
    model_info = ModelInfo(
        name=package.name, version=package.version, intended_use=package.intended_use
    )
    segs = build_segmentations(study, segmentation.labels, grid, model_info, reporting)
    seg_dir = out_dir / "seg"
    seg_dir.mkdir(exist_ok=True)
    seg_paths = []
    for stack, seg in zip(study.stacks, segs):
        path = seg_dir / f"stack{stack.index}.dcm"
        seg.save_as(path, enforce_file_format=True)
        seg_paths.append(path)
    report = build_report(study, segs, results, model_info, reporting)
    sr_path = out_dir / "sr.dcm"
    report.save_as(sr_path, enforce_file_format=True)
    t = step("report", t)
    timings["total"] = round(time.perf_counter() - started, 3)
    with open(out_dir / "results.json", "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    _write_csv(out_dir / "results.csv", muscles)
    return ProcessResult(results, out_dir, seg_paths, sr_path)


REFERENCE_FALLBACK = ("in_phase", "out_of_phase")


def reporting_for(study: StudyStacks, config: ReportingConfig) -> tuple[ReportingConfig, list[str]]:
    """The reporting settings for this study: a study without images of the configured SEG
    reference role (echoes only have no water) references its in_phase images (or
    out_of_phase), with a note saying so."""
    role = config.reference_role
    if all(role in stack.roles for stack in study.stacks):
        return config, []
    fallback = next((r for r in REFERENCE_FALLBACK
                     if all(r in stack.roles for stack in study.stacks)), None)
    if fallback is None:
        return config, []  # check_reportable names what is missing
    source = derived_roles(study).get(fallback)
    shown = f"{fallback} ({source})" if source else fallback
    return replace(config, reference_role=fallback), [
        f"no {role} images to reference: the SEGs reference the {shown} images"]


def _none_if_nan(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def run_process(
    folder: Path, out_dir: Path, config_path: Path | None, device: str | None,
    study_uid: str | None = None, rules_path: Path | None = None,
) -> ProcessResult:
    """Entry point of ``myonode process``: settings first, then the study."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    settings = load_settings(config_path)
    study = select_study(folder, DixonRules.load(rules_path), study_uid)
    for warning in study.warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return process_study(study, out_dir, settings, device=device)
