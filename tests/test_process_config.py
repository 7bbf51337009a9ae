"""The processing settings (``config/pipeline.yaml``, ``config/reporting.yaml``) are checked first.

A malformed site file, a wrong type or value, or an unknown key must end ``myonode process``
before any study is read, with one line on stderr naming the file and the key and exit code
2, never a traceback; the node's job worker must refuse the same settings the same way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from myonode_config import config_path

from dicom_node.cli import EXIT_BAD_INPUT, main
from dicom_node.serve.jobs import EXIT_FAILED, child_main
from inference.pipeline_config import PipelineConfig, load_pipeline_config
from reporting.seg import ReportingConfigError, load_reporting_config

# (file content, what the one stderr line must say after "<file>: ")
BAD_FILES = [
    ("hello\n", "must be a mapping of settings (key: value), got str 'hello'"),
    ("- model\n- device\n", "must be a mapping of settings (key: value), got list"),
    ("device: gpu\n", "device: must be one of auto, cpu, cuda, got 'gpu'"),
    ("model: 5\n", "model: must be the path of a model package folder, or null, got 5"),
    ("model: /no/such/model\n", "model: no model package folder at /no/such/model"),
    ("devise: cpu\n", "devise: unknown key; expected one of model, device, inference,"),
    ("inference:\n  batchsize: 2\n", "inference.batchsize: unknown key; expected one of"),
    ("inference: fast\n", "inference: must be a mapping of overlap, batch_size, got 'fast'"),
    ("inference:\n  overlap: 1.5\n", "inference.overlap: must be a number from 0 to below 1"),
    ("inference:\n  batch_size: 0\n", "inference.batch_size: must be a positive integer"),
    ("fat_fraction:\n  prefer: [dixon]\n", "fat_fraction.prefer: must be a list of distinct"),
    ("fat_fraction:\n  scanner_map_units: [percent]\n",
     "fat_fraction.scanner_map_units: must be one of percent, fraction, permille"),
    ("stitching:\n  match_intensity: maybe\n",
     "stitching.match_intensity: must be true or false, got 'maybe'"),
    ("quantification:\n  core: 4d\n", "quantification.core: must be one of 3d, 2d, got '4d'"),
    ("device: [cpu\n", "not valid YAML at line 2"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_a_bad_pipeline_file_is_one_line_and_exit_2_before_any_study_is_read(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(text, encoding="utf-8")
    empty = tmp_path / "no-study"  # read first, it would fail with "no Dixon study found"
    empty.mkdir()
    code = main(["process", str(empty), "--out", str(tmp_path / "out"), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert err.splitlines() == [err.strip()], err
    assert err.startswith(f"myonode process: {config}: {message}"), err


def test_a_missing_pipeline_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    code = main(["process", str(tmp_path), "--out", str(tmp_path / "out"),
                 "--config", str(missing)])
    assert code == EXIT_BAD_INPUT
    assert capsys.readouterr().err == f"myonode process: {missing}: no such file\n"


def test_defaults_are_those_of_the_embedded_file() -> None:
    data = yaml.safe_load(config_path("pipeline.yaml").read_text(encoding="utf-8"))
    assert load_pipeline_config() == PipelineConfig(
        model=None,
        device=data["device"],
        overlap=data["inference"]["overlap"],
        batch_size=data["inference"]["batch_size"],
        ff_prefer=tuple(data["fat_fraction"]["prefer"]),
        ff_units=data["fat_fraction"]["scanner_map_units"],
        match_intensity=data["stitching"]["match_intensity"],
        core=data["quantification"]["core"],
    )
    assert load_pipeline_config() == PipelineConfig(
        None, "auto", 0.5, None,
        ("water_fat", "fat_fraction", "complex_echoes", "magnitude_echoes", "ip_op"),
        "percent", True, "3d",
    )


def test_a_site_file_names_only_what_it_changes(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    config.write_text("inference:\n  overlap: 0.25\nquantification:\n  core: 2d\n"
                      "device: null\n", encoding="utf-8")
    loaded = load_pipeline_config(config)
    defaults = load_pipeline_config()
    assert (loaded.overlap, loaded.core) == (0.25, "2d")
    assert (loaded.device, loaded.batch_size, loaded.ff_prefer, loaded.match_intensity) == (
        defaults.device, defaults.batch_size, defaults.ff_prefer, defaults.match_intensity
    )
    config.write_text("", encoding="utf-8")
    assert load_pipeline_config(config) == defaults


def test_a_malformed_reporting_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "reporting.yaml"
    path.write_text("reference_role: [water\n", encoding="utf-8")
    with pytest.raises(ReportingConfigError, match=rf"^{path}: not valid YAML"):
        load_reporting_config(path)
    path.write_text("- water\n", encoding="utf-8")
    with pytest.raises(ReportingConfigError, match=rf"^{path}: must be a mapping"):
        load_reporting_config(path)


def test_a_reporting_value_dicom_cannot_hold_is_refused_at_load(tmp_path: Path) -> None:
    # found when the file is read, not by highdicom after the study was segmented
    path = tmp_path / "reporting.yaml"
    text = config_path("reporting.yaml").read_text(encoding="utf-8")
    path.write_text(text.replace("manufacturer: myonode", "manufacturer: " + "m" * 65),
                    encoding="utf-8")
    with pytest.raises(ReportingConfigError, match="manufacturer must be at most 64 characters"):
        load_reporting_config(path)


def test_the_job_worker_refuses_the_same_file(
    small_study: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "input"
    shutil.copytree(small_study[0].parents[1], inputs)
    config = tmp_path / "site.yaml"
    config.write_text("inference:\n  overlap: 2\n", encoding="utf-8")
    (tmp_path / "out").mkdir()  # the worker makes each attempt's folder
    code = child_main([str(inputs), str(tmp_path / "out"), "--config", str(config)])
    assert code == EXIT_FAILED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "inference.overlap: must be a number from 0 to below 1, got 2" in last, last
    assert not (tmp_path / "out" / "labels.nii.gz").exists()
