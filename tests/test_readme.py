"""The README's commands work as written: a new user copies them, so they are tested.

The "Try it" block is run with its own paths moved into a temporary folder and a smaller
phantom (``--slices``/``--matrix`` keep the field of view); the DCMTK line is run against the
node's SCP; the test command is the one CI runs.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from validators import missing_tool

from dicom_node.node.config import NodeConfig
from dicom_node.node.metrics import NodeMetrics
from dicom_node.receive.scp import StorageSCP
from dicom_node.receive.spool import Spool, StoredInstance

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SMALL = ["--slices", "16", "--matrix", "48"]


def _block_after(heading: str) -> list[str]:
    """The command lines of the first ``sh`` block after ``heading`` (comments dropped)."""
    section = README[README.index(heading):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, f"no sh block after {heading!r}"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _in(tmp: Path, command: str) -> list[str]:
    """A README command with its /tmp paths moved under ``tmp``."""
    return [arg.replace("/tmp/", f"{tmp}/") for arg in shlex.split(command)]


def _myonode(args: list[str]) -> subprocess.CompletedProcess:
    assert args[0] == "myonode"
    return subprocess.run([sys.executable, "-m", "dicom_node.cli", *args[1:]],
                          capture_output=True, text=True, timeout=600, check=False)


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    command = _block_after("Set up and run the tests")[0]
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_try_it_points_each_command_at_what_the_phantom_wrote(tmp_path: Path) -> None:
    phantom, inspect, process, evaluate = (_in(tmp_path, c) for c in
                                           _block_after("## Try it without a scanner"))
    made = _myonode(phantom + SMALL)
    assert made.returncode == 0, made.stderr
    report = _myonode([*inspect, "--json"])
    assert report.returncode == 0, report.stderr
    found = json.loads(report.stdout)
    assert found["problems"] == []
    assert len(found["studies"]) == 1 and len(found["studies"][0]["stacks"]) == 3
    # process reads the folder inspect was given; evaluate compares with the phantom's truth
    assert process[:2] == ["myonode", "process"] and process[2] == inspect[2]
    assert evaluate[2] == process[process.index("--out") + 1]
    assert (Path(evaluate[3]) / "labels.nii.gz").is_file()


class _Stored:
    """Collects what the SCP reports as stored (the node's receive listener)."""

    def __init__(self) -> None:
        self.instances: list[StoredInstance] = []

    def on_instance_stored(self, stored: StoredInstance) -> None:
        self.instances.append(stored)

    def on_association_released(self, calling_ae: str, study_uids: set[str]) -> None:
        """Nothing to do when the sender is done."""


def test_the_dcmtk_send_line_stores_the_study(tmp_path: Path) -> None:
    command = _block_after("Send it to the node as a scanner would")[0]
    tool = Path(shlex.split(command)[0])
    assert tool.is_absolute(), "DCMTK must be called by its path (pynetdicom has a storescu too)"
    if not tool.is_file():
        missing_tool(f"DCMTK's {tool}")
    version = subprocess.run([str(tool), "--version"], capture_output=True, text=True,
                             timeout=30, check=False)
    assert "dcmtk" in (version.stdout + version.stderr).lower()
    made = _myonode(["myonode", "phantom", str(tmp_path / "study"), "--stacks", "1", *SMALL])
    assert made.returncode == 0, made.stderr
    config = replace(NodeConfig(), port=0, data_dir=tmp_path / "data")
    listener = _Stored()
    scp = StorageSCP(config, Spool(config.data_dir / "spool"), listener,
                     NodeMetrics(config.data_dir))
    scp.start()
    try:
        args = [a.replace("11112", str(scp.port)) for a in _in(tmp_path, command)]
        sent = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    finally:
        scp.stop()
    assert sent.returncode == 0, sent.stdout + sent.stderr
    files = list((tmp_path / "study" / "dicom").rglob("*.dcm"))
    assert files and len(listener.instances) == len(files)

