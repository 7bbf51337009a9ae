"""The container image's configuration, read from the Dockerfile as a reviewer would.

There is no Docker engine on the build machines, so the image is checked by hadolint (in
.ci/run) and here: the node config the image's command line loads, with and without a site
file mounted over /etc/myonode/node.yaml, and the torch build matching the CUDA base image.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dicom_node.node.config import load_node_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
SITE_FILE = "/etc/myonode/node.yaml"


def _command() -> list[str]:
    return json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M).group(1))


def _config_files(site: Path) -> list[Path]:
    """The image's --config files as files of this repository (the site's one: ``site``)."""
    copied = dict((dst, src) for src, dst in
                  re.findall(r"^COPY (\S+) (\S+)$", DOCKERFILE, re.M))
    command = _command()
    paths = [command[i + 1] for i, arg in enumerate(command) if arg == "--config"]
    assert paths[-1] == SITE_FILE, "the site's file must come last, so that it wins"
    return [site if path == SITE_FILE else ROOT / copied[path] for path in paths]


def test_the_image_listens_on_every_interface_and_keeps_data_on_the_volume(tmp_path) -> None:
    site = tmp_path / "node.yaml"
    site.write_text("# Site settings: mount a node.yaml here\n", encoding="utf-8")
    config = load_node_config(*_config_files(site))
    assert (config.host, config.data_dir, config.http.host) == ("0.0.0.0", Path("/data"), "0.0.0.0")


def test_a_site_file_changes_only_what_it_names(tmp_path) -> None:
    site = tmp_path / "node.yaml"
    site.write_text("node: {ae_title: SITENODE}\n"
                    "destinations: [{name: pacs, ae_title: PACS, host: pacs.example, port: 104}]\n",
                    encoding="utf-8")
    config = load_node_config(*_config_files(site))
    assert config.ae_title == "SITENODE"
    assert [d.name for d in config.destinations] == ["pacs"]
    # what the image set stays: the site did not have to repeat it
    assert (config.host, config.data_dir, config.http.host) == ("0.0.0.0", Path("/data"), "0.0.0.0")


def test_torch_is_built_for_the_base_image_cuda() -> None:
    cuda = re.search(r"^ARG CUDA_VERSION=(\d+)\.(\d+)\.\d+$", DOCKERFILE, re.M)
    torch_cuda = re.search(r"^ARG TORCH_CUDA=(\S+)$", DOCKERFILE, re.M).group(1)
    assert torch_cuda == f"cu{cuda.group(1)}{cuda.group(2)}"
    assert "FROM nvidia/cuda:${CUDA_VERSION}-" in DOCKERFILE
    assert "whl/${TORCH_CUDA}" in DOCKERFILE
