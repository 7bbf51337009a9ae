"""Real peers and a real node for the node's tests: a tiny model, a PACS stand-in
(``storescp``), Orthanc, and ``myonode serve`` as a subprocess, all on 127.0.0.1.

The sending peer (the scanner) comes from ``tests/peers.py`` and is chosen the same way
(``MYONODE_TEST_PEER``: auto, dcmtk, dcm4che, pynetdicom); the receiving stand-in is that
vendor's ``storescp`` (dcm4che's when the peer is dcm4che, else DCMTK's), set to keep every
copy it receives so that a duplicate delivery cannot hide.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from peers import _find, scu_peer

from inference.models.package import ModelPackage
from inference.models.unet import UNet3D, UNetConfig

TINY_CODES = ["RF", "VL", "VM", "VI"]
TINY_NETWORK = {"in_channels": 2, "num_classes": len(TINY_CODES) + 1, "widths": [4, 8],
                "convs_per_level": 1, "bottom_convs": 1}


# -- a small real model and pipeline config ---------------------------------------------------


def tiny_model(folder: Path) -> Path:
    """A real model package with random weights, small enough to segment a phantom in seconds."""
    meta = {
        "format_version": 1, "name": "tiny-test", "version": "0.0.1", "anatomy": "thigh",
        "intended_use": "tests only", "training_data": "none (random weights)",
        "labels": TINY_CODES,
        "inputs": [{"role": "water", "normalisation": {"method": "zscore"}},
                   {"role": "fat", "normalisation": {"method": "zscore"}}],
        "spacing_mm": [35.0, 9.6, 9.6], "patch_size": [8, 32, 32], "network": TINY_NETWORK,
        "models": {"li": {"folds": ["li/fold1.safetensors"]}},
    }
    torch.manual_seed(0)
    ModelPackage.from_dict(meta).save(folder, {"li": [UNet3D(UNetConfig.from_dict(TINY_NETWORK))]})
    return folder


def pipeline_yaml(folder: Path, model: Path) -> Path:
    """A pipeline config that uses ``model`` on the CPU."""
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"model": str(model), "device": "cpu",
                                   "inference": {"overlap": 0.25}}), encoding="utf-8")
    return path


# -- ports and tools ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    """A PACS stand-in that keeps every received copy (DCMTK ``+uf``, dcm4che ``{rnd}`` in
    the file name), so a duplicate delivery shows up as a second file with the same SOP
    Instance UID."""

    def __init__(self, folder: Path, port: int, ae_title: str = "PACS") -> None:
        self.folder, self.port, self.ae_title = folder, port, ae_title
        folder.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self.kind = "dcm4che" if scu_peer().name == "dcm4che" else "dcmtk"
        tool = _find(self.kind, "storescp")
        if tool is None:
            pytest.fail(f"{self.kind} storescp not found (the PACS stand-in of these tests)")
        self.tool = str(tool)

    def start(self) -> Receiver:
        if self.kind == "dcm4che":
            command = [self.tool, "-b", f"{self.ae_title}@127.0.0.1:{self.port}",
                       "--directory", str(self.folder), "--filepath", "{00080018}-{rnd}.dcm",
                       "--accept-unknown"]
        else:
            command = [self.tool, "-aet", self.ae_title, "-od", str(self.folder), "+uf",
                       "--promiscuous", "+xa", str(self.port)]
        self.log = open(self.folder.parent / f"{self.folder.name}.log", "ab")  # noqa: SIM115 - open while it runs
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: _port_open(self.port), 30, f"storescp on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None
            self.log.close()

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def sop_instance_uids(self) -> list[str]:
        import pydicom

        return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in self.files()]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


# -- Orthanc ---------------------------------------------------------------------------------


class Orthanc:
    """An Orthanc of its own: temporary storage, ephemeral ports, 127.0.0.1 only."""

    def __init__(self, folder: Path, node_port: int, node_aet: str = "MYONODE",
                 ae_title: str = "ORTHANC") -> None:
        self.binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if not os.access(self.binary, os.X_OK):
            message = "Orthanc not installed (apt-get install orthanc)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        self.folder, self.ae_title = folder, ae_title
        self.dicom_port, self.http_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "orthanc.json"
        # Orthanc 1.10 has no option to bind its ports to one address: with remote access
        # disallowed its REST API answers 127.0.0.1 only, and its DICOM port accepts only
        # the node's AE title from 127.0.0.1 (no "always allow" for unknown peers).
        self.config.write_text(json.dumps({
            "Name": "myonode-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "DicomAet": ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomModalities": {"myonode": [node_aet, "127.0.0.1", node_port]},
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": True,
            "Plugins": [],
        }, indent=2), encoding="utf-8")
        self.process: subprocess.Popen | None = None

    def start(self) -> Orthanc:
        self.log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - open while it runs
        self.process = subprocess.Popen([self.binary, str(self.config)], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        wait_for(self._alive, 60, "Orthanc's REST API", interval_s=0.2)
        return self

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited ({self.process.returncode}); see "
                                 f"{self.folder / 'orthanc.log'}")
        try:
            return bool(self.get("/system"))
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            self.log.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url(path), timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes, content_type: str = "application/json"):
        request = urllib.request.Request(self.url(path), data=body, method="POST",
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"null")

    def upload(self, path: Path) -> dict:
        return self.post("/instances", path.read_bytes(), "application/dicom")

    def instance_tags(self, instance_id: str) -> dict:
        return self.get(f"/instances/{instance_id}/simplified-tags")

    def instances_of_modality(self, modality: str) -> list[dict]:
        found = []
        for series_id in self.get("/series"):
            series = self.get(f"/series/{series_id}")
            if series["MainDicomTags"].get("Modality") == modality:
                found += [self.instance_tags(i) for i in series["Instances"]]
        return found


# -- the node as a subprocess --------------------------------------------------------------------


class NodeProcess:
    """``myonode serve`` in a subprocess with a YAML config in a temporary folder."""

    def __init__(self, folder: Path, pipeline: Path, destinations: list[dict] | None = None,
                 port: int = 0, **sections: dict) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.data_dir = folder / "data"
        self.http_port = free_port()
        config = {
            "node": {"ae_title": "MYONODE", "host": "127.0.0.1", "port": port,
                     "data_dir": str(self.data_dir)},
            "destinations": destinations or [],
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "pipeline": str(pipeline),
            "completion": {"quiet_period_s": 2, "max_wait_s": 120},
            "outbox": {"retry_initial_s": 0.5, "retry_max_s": 2, "give_up_after_s": 120},
            "limits": {"min_free_disk_mb": 1},
        }
        for key, value in sections.items():
            config[key] = {**config.get(key, {}), **value}
        self.config = folder / "node.yaml"
        self.config.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.starts = 0

    def start(self, umask: int = -1) -> NodeProcess:
        """Start the node (``umask``: the one it is started with; -1 this process's)."""
        self.starts += 1
        self.log_path = self.folder / f"node-{self.starts}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while it runs
        command = [sys.executable, "-m", "dicom_node.cli", "serve", "--config",
                   str(self.config)]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        umask=umask)
        runtime = self.data_dir / "node.json"

        def ready() -> dict | None:
            if self.process.poll() is not None:
                raise AssertionError(f"node exited ({self.process.returncode}):\n"
                                     + self.log_path.read_text()[-3000:])
            try:
                info = json.loads(runtime.read_text())
            except (OSError, ValueError):
                return None
            return info if info.get("pid") == self.process.pid else None

        self.port = int(wait_for(ready, 60, "the node to start")["dicom_port"])
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=60)
        self.process = None
        self._log.close()

    def stop(self) -> None:
        if self.process is not None:
            self.kill(signal.SIGTERM)

    def children(self) -> list[int]:
        """Process ids of the node's children (a running job)."""
        assert self.process is not None
        pids = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
        return pids

    def db(self) -> sqlite3.Connection:
        """A read-only look at the node's state."""
        uri = f"file:{self.data_dir / 'state.sqlite3'}?mode=ro"
        connection = sqlite3.connect(uri, uri=True, timeout=30)
        connection.row_factory = sqlite3.Row
        return connection

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        if not (self.data_dir / "state.sqlite3").exists():
            return []
        connection = self.db()
        try:
            return connection.execute(sql, args).fetchall()
        finally:
            connection.close()

    def jobs(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM jobs ORDER BY id")

    def wait_jobs(self, states: set[str], count: int = 1, timeout_s: float = 120) -> list:
        """Wait until ``count`` jobs exist and all are in ``states``."""
        def settled():
            jobs = self.jobs()
            return jobs if len(jobs) >= count and all(j["state"] in states for j in jobs) else None

        try:
            return wait_for(settled, timeout_s, f"{count} job(s) in {states}", interval_s=0.2)
        except AssertionError as exc:
            rows = [dict(j) for j in self.jobs()]
            raise AssertionError(f"{exc}; jobs: {rows}\n"
                                 + self.log_path.read_text()[-4000:]) from None

    def http(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                        timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """``myonode <args> --config <this node's config>`` (the node commands)."""
        return subprocess.run([sys.executable, "-m", "dicom_node.cli", *args,
                               "--config", str(self.config)], capture_output=True, text=True,
                              timeout=60, check=False)

    def events(self, name: str) -> list[dict]:
        found = []
        for log in sorted(self.folder.glob("node-*.log")):
            for line in log.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("event") == name:
                    found.append(entry)
        return found
