"""Shared parts of the benchmarks: what machine and commit a figure belongs to, the phantom
studies they send, DCMTK's tools, and rows of the results table ``BENCHMARKS.md``.

A figure without its conditions cannot be compared with the next one, so every row carries
the date, the machine (cores, CPU model, RAM), the commit and the load average when the
benchmark started (the machine may be shared with other work).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dicom_node.phantom.study import PHANTOM_VERSION, PhantomOptions, make_phantom

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "BENCHMARKS.md"
CACHE = Path(os.environ.get("MYONODE_BENCH_CACHE", "/tmp/myonode-bench"))


@dataclass(frozen=True)
class Conditions:
    """Where and when a benchmark ran."""

    date: str
    cores: int
    cpu: str
    ram_gib: float
    commit: str
    load_start: tuple[float, float, float]

    @property
    def machine(self) -> str:
        return f"{self.cores} cores, {self.cpu}, {self.ram_gib:.0f} GiB"

    @property
    def load(self) -> str:
        return "/".join(f"{v:.2f}" for v in self.load_start)


def conditions() -> Conditions:
    """The conditions now: call it when the benchmark starts (for the load average)."""
    return Conditions(
        date=datetime.now().strftime("%Y-%m-%d %H:%M"),
        cores=os.cpu_count() or 1,
        cpu=_cpu_model(),
        ram_gib=_ram_bytes() / 2**30,
        commit=_commit(),
        load_start=os.getloadavg(),
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=10,
                               check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    # A tree with uncommitted changes is not the commit: say so in the row.
    return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def busy_processes(threshold_pct: float = 20.0, exclude: set[int] | None = None) -> list[str]:
    """Other processes using CPU right now (a one-second sample of /proc), for the row's note."""
    exclude = (exclude or set()) | {os.getpid()}

    def sample() -> dict[int, tuple[int, str]]:
        ticks = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in exclude:
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            ticks[int(entry.name)] = (int(fields[11]) + int(fields[12]), name)
        return ticks

    first = sample()
    time.sleep(1.0)
    second = sample()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (ticks, name) in second.items():
        used = (ticks - first.get(pid, (ticks, name))[0]) / hz * 100
        if used >= threshold_pct:
            busy.append(f"{name} {used:.0f}%")
    return busy


# -- phantom studies ---------------------------------------------------------------------------


def phantom(name: str, options: PhantomOptions) -> Path:
    """The DICOM folder of a phantom study, made once and kept under the cache folder; made
    again when the cached one came from other options or an older phantom."""
    folder = CACHE / name
    if not _cached_phantom_matches(folder, options):
        if folder.exists():
            shutil.rmtree(folder)
        print(f"making phantom {name} in {folder} ...", flush=True)
        make_phantom(folder, options)
    return folder / "dicom"


def _cached_phantom_matches(folder: Path, options: PhantomOptions) -> bool:
    """True when ``folder`` holds a complete study of ``options`` by this phantom version."""
    markers = [folder / "truth" / "truth.json", folder / "truth" / "thigh" / "truth.json"]
    marker = next((m for m in markers if m.is_file()), None)
    if marker is None:
        return False
    truth = json.loads(marker.read_text(encoding="utf-8"))
    return (truth.get("phantom_version") == PHANTOM_VERSION
            and truth.get("phantom") == json.loads(json.dumps(options.__dict__)))


def dicom_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


# -- tools and ports -----------------------------------------------------------------------------


def dcmtk(name: str) -> Path:
    """DCMTK's ``name`` (pynetdicom installs console scripts of the same names that may come
    first on PATH, so tools are told apart by their ``--version``)."""
    candidates = [Path(d) / name for d in os.environ.get("PATH", "").split(os.pathsep)]
    for tool in [Path("/usr/bin") / name, *candidates]:
        if not (tool.is_file() and os.access(tool, os.X_OK)):
            continue
        try:
            version = subprocess.run([str(tool), "--version"], capture_output=True, text=True,
                                     timeout=10, stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if "dcmtk" in (version.stdout + version.stderr).lower():
            return tool
    raise SystemExit(f"DCMTK {name} not found (apt-get install dcmtk)")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = 60.0) -> None:
    """Wait until something listens on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s:.0f} s")


# -- the results table ---------------------------------------------------------------------------


def row(cond: Conditions, cells: list[str]) -> str:
    """One markdown table row: date, machine, commit, load at start, then ``cells``."""
    values = [cond.date, cond.machine, cond.commit, cond.load, *cells]
    return "| " + " | ".join(v.replace("|", "/") for v in values) + " |"


def row_note(parts: list[str], busy: list[str], extra: str = "") -> str:
    """A row's note: its ``parts``, the processes that were busy at the start, ``extra``."""
    busy_text = f"busy at start: {', '.join(busy)}" if busy else ""
    return "; ".join(filter(None, [*parts, busy_text, extra]))


def record(section: str, rows: list[str]) -> None:
    """Add ``rows`` to the table of ``section`` in BENCHMARKS.md (above its end marker)."""
    marker = f"<!-- end of {section} rows -->"
    text = TABLE.read_text(encoding="utf-8")
    if marker not in text:
        raise SystemExit(f"{TABLE} has no marker {marker!r}")
    text = text.replace(marker, "\n".join(rows) + "\n" + marker)
    TABLE.write_text(text, encoding="utf-8")
    print(f"recorded {len(rows)} row(s) in {TABLE.name} ({section})")


# -- the node as a subprocess ----------------------------------------------------------------------


class NodeProcess:
    """``myonode serve`` (``python -m dicom_node.cli serve``) in a subprocess, with a
    YAML config and its data folder under ``folder``, on 127.0.0.1 and free ports."""

    def __init__(self, folder: Path, **sections: dict) -> None:
        import yaml

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.data_dir = folder / "data"
        config: dict = {
            "node": {"ae_title": "MYONODE", "host": "127.0.0.1", "port": 0,
                     "data_dir": str(self.data_dir)},
            "destinations": [],
            "http": {"host": "127.0.0.1", "port": free_port()},
            "limits": {"min_free_disk_mb": 1},
        }
        for key, value in sections.items():
            config[key] = {**config[key], **value} if isinstance(value, dict) \
                and isinstance(config.get(key), dict) else value
        self.config = folder / "node.yaml"
        self.config.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout_s: float = 60.0) -> NodeProcess:
        import json
        import sys

        self.log = open(self.folder / "node.log", "ab")  # noqa: SIM115 - open while it runs
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        runtime = self.data_dir / "node.json"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the node exited ({self.process.returncode}); see "
                                 f"{self.folder / 'node.log'}")
            try:
                info = json.loads(runtime.read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("pid") == self.process.pid:
                self.port = int(info["dicom_port"])
                return self
            time.sleep(0.05)
        raise TimeoutError("the node did not start")

    def stop(self) -> None:
        """SIGTERM and wait (a job child dies with the node)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        self.log.close()

    def query(self, sql: str, args: tuple = ()) -> list:
        """Rows of a read-only query on the node's state database."""
        import sqlite3

        connection = sqlite3.connect(f"file:{self.data_dir / 'state.sqlite3'}?mode=ro",
                                     uri=True, timeout=30)
        try:
            return connection.execute(sql, args).fetchall()
        finally:
            connection.close()


# -- the model ---------------------------------------------------------------------------------------


def benchmark_model() -> tuple[Path, str]:
    """The model package to time, and how to name it in a row.

    The shipped ``models/thigh-phantom`` when it is installed; else a package with the
    network, patch and spacing of ``config/training.yaml``'s defaults (the recipe of the
    shipped model) and random weights, made once under the cache folder. Timing and memory
    do not depend on the weights; the labels it produces are meaningless.
    """
    from dicom_node.process import shipped_model_path
    from inference.models.package import ModelPackage, ModelPackageError

    shipped = shipped_model_path()
    try:
        ModelPackage.load(shipped)
        return shipped, "models/thigh-phantom"
    except ModelPackageError:
        pass
    import torch

    from inference.models.unet import UNet3D
    from inference.training.config import load_training_config
    from inference.training.packaging import package_template

    folder = CACHE / "random-model"
    template = package_template(load_training_config())
    torch.manual_seed(0)
    weights = {key: [UNet3D(template.network) for _ in files]
               for key, files in template.models.items()}
    template.save(folder, weights)
    return folder, "random weights, training.yaml network (thigh-phantom not shipped yet)"
