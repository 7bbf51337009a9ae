"""Echo-only phantom studies end to end: ``myonode phantom --dixon-output``, ``myonode
process`` and ``myonode serve`` receiving one over C-STORE; the FF source and method reach
results.json and the SR."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import torch
import yaml
from node_helpers import TINY_CODES, TINY_NETWORK, NodeProcess
from peers import scu_peer

from dicom_node.cli import main
from dicom_node.study.dixon_roles import DixonRules
from inference.models.package import ModelPackage
from inference.models.unet import UNet3D, UNetConfig
from reporting import codes

SMALL = ["--stacks", "2", "--slices", "8", "--matrix", "48", "--seed", "4"]
PREFER = ["water_fat", "fat_fraction", "complex_echoes", "magnitude_echoes", "ip_op"]


def ip_op_model(folder: Path) -> Path:
    """A tiny real package whose inputs are in_phase and out_of_phase (as the shipped one)."""
    meta = {
        "format_version": 1, "name": "tiny-ip-op", "version": "0.0.1", "anatomy": "thigh",
        "intended_use": "tests only", "training_data": "none (random weights)",
        "labels": TINY_CODES,
        "inputs": [{"role": "in_phase", "normalisation": {"method": "zscore"}},
                   {"role": "out_of_phase", "normalisation": {"method": "zscore"}}],
        "spacing_mm": [35.0, 9.6, 9.6], "patch_size": [8, 32, 32], "network": TINY_NETWORK,
        "models": {"li": {"folds": ["li/fold1.safetensors"]}},
    }
    torch.manual_seed(0)
    ModelPackage.from_dict(meta).save(folder, {"li": [UNet3D(UNetConfig.from_dict(TINY_NETWORK))]})
    return folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "model": str(ip_op_model(root / "model")), "device": "cpu",
        "inference": {"overlap": 0.25}, "fat_fraction": {"prefer": PREFER},
    }), encoding="utf-8")
    return path


def phantom(folder: Path, vendor: str, output: str) -> Path:
    assert main(["phantom", str(folder), "--vendor", vendor, "--dixon-output", output,
                 *SMALL]) == 0
    return folder / "dicom"


def check_results(out: Path, source: str, echo_times: list[float], field: float) -> dict:
    results = json.loads((out / "results.json").read_text())
    record = results["fat_fraction"]
    assert record["source"] == results["fat_fraction_source"] == source, record
    assert record["method"] and record["limits"]
    assert record["echo_times_ms"] == echo_times and record["field_strength_t"] == field
    assert set(results["derived_roles"]) == {"in_phase", "out_of_phase"}
    assert any("SEGs reference the in_phase" in w for w in results["warnings"])
    sr = hd.sr.srread(out / "sr.dcm")
    methods = {m.method.value for group in sr.content.get_volumetric_roi_measurement_groups()
               for m in group.get_measurements(name=codes.FAT_FRACTION)}
    assert methods == {codes.FF_METHODS[record["source"]].value}
    texts = [item.TextValue for container in sr.ContentSequence
             if container.ConceptNameCodeSequence[0].CodeValue == "C0034375"
             for item in container.ContentSequence]
    assert any(record["method"].rstrip(".") in text for text in texts), texts
    return results


def test_phantom_writes_echo_series_and_the_same_truth(tmp_path, capsys):
    echoes = phantom(tmp_path / "echoes", "siemens", "echoes")
    assert main(["phantom", str(tmp_path / "scanner"), "--vendor", "siemens", *SMALL]) == 0
    capsys.readouterr()
    truth = [json.loads((tmp_path / name / "truth" / "truth.json").read_text())
             for name in ("echoes", "scanner")]
    assert truth[0]["muscles"] == truth[1]["muscles"]
    rules = DixonRules.load()
    found = set()
    for path in echoes.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.add((rules.roles(ds)[0], float(ds.EchoTime), float(ds.MagneticFieldStrength)))
    assert found == {("echo_magnitude", te, 3.0) for te in (3.45, 4.6, 5.75)}
    assert main(["phantom", str(tmp_path / "p"), "--vendor", "philips",
                 "--dixon-output", "echoes", *SMALL]) != 0
    assert "not 'philips'" in capsys.readouterr().err


@pytest.mark.parametrize("output, source", [("echoes+phase", "complex_echoes"),
                                            ("echoes", "magnitude_echoes")])
def test_process_an_echo_only_study(tmp_path, pipeline, capsys, output, source):
    dicom = phantom(tmp_path / "study", "siemens", output)
    out = tmp_path / "out"
    assert main(["process", str(dicom), "--out", str(out), "--config", str(pipeline)]) == 0
    capsys.readouterr()
    results = check_results(out, source, [3.45, 4.6, 5.75], 3.0)
    assert results["derived_roles"] == {"in_phase": "echo_magnitude_4.60ms",
                                        "out_of_phase": "echo_magnitude_3.45ms"}
    assert results["muscles"] and results["overall_ff_pct"] is not None


def test_serve_receives_and_processes_an_echo_only_study(tmp_path, pipeline):
    dicom = phantom(tmp_path / "study", "ge", "echoes+phase")
    files = sorted(dicom.rglob("*.dcm"))
    node = NodeProcess(tmp_path / "node", pipeline).start()
    try:
        run = scu_peer().store(files, node.port, calling="SCANNER")
        assert run.returncode == 0, run.output
        [job] = node.wait_jobs({"done", "failed"}, timeout_s=180)
        assert job["state"] == "done", (dict(job), node.log_path.read_text()[-3000:])
        assert job["trigger"] == "complete"  # the echoes made a complete study
        # two echoes make no out/in/out triple for a fit: the two-point formula on the
        # echoes standing in for out- and in-phase
        check_results(node.data_dir / "jobs" / f"job-{job['id']}" / "attempt-1", "ip_op",
                      [2.2, 4.4], 1.5)
    finally:
        node.stop()
