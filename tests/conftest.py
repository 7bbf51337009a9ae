"""Fixtures shared by the node's test modules (made once per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from node_helpers import pipeline_yaml, tiny_model

from dicom_node.phantom.study import PhantomOptions, make_phantom


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The files of a small siemens phantom study: 2 stacks of 8 slices, 48 x 48, 4 roles."""
    out = tmp_path_factory.mktemp("small-study")
    make_phantom(out, PhantomOptions(stacks=2, slices=8, matrix=48))
    return sorted((out / "dicom").rglob("*.dcm"))


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline YAML whose model is a tiny random network (fast; labels are not judged)."""
    folder = tmp_path_factory.mktemp("model")
    return pipeline_yaml(folder, tiny_model(folder / "tiny"))
