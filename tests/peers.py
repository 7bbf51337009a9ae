"""Real DICOM peers for the node's tests: the SCU that plays the scanner or PACS.

Which SCU is used is chosen by the environment variable ``MYONODE_TEST_PEER``:

* ``dcm4che``    dcm4che's ``storescu`` (it sends C-ECHO when given no file); the TLS cases
                 use DCMTK instead, because dcm4che wants Java key stores.
* ``dcmtk``      DCMTK's ``storescu`` and ``echoscu`` (Debian package ``dcmtk``).
* ``pynetdicom`` pynetdicom's bundled ``storescu``/``echoscu`` apps, run as separate
                 processes (the same library as the node, so the weakest interoperability
                 check; useful where neither tool can be installed; TLS cases use DCMTK).
* unset/``auto`` dcm4che when its ``storescu`` is on PATH, else DCMTK; when neither is found
                 the tests that need a peer are skipped, or fail when ``CI`` is set.

Tools are found on PATH by what they are, not by name alone: pynetdicom installs console
scripts also called ``storescu``/``echoscu`` that may come first on PATH. Set
``MYONODE_DCM4CHE_STORESCU`` to the dcm4che ``storescu`` script when it is not on PATH.
A peer named explicitly but not found is a test failure, never a skip. TLS certificates are
made with the ``openssl`` command line tool (``make_throwaway_pki``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

PEER_ENV = "MYONODE_TEST_PEER"
DCM4CHE_ENV = "MYONODE_DCM4CHE_STORESCU"
TIMEOUT_S = 60


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS client: the CA that signed the server, and our own certificate."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class PeerRun:
    """The outcome of one tool run: exit code and everything it printed."""

    returncode: int
    output: str

    @property
    def rejected(self) -> bool:
        """The tool reports an A-ASSOCIATE-RJ (each tool words it differently)."""
        text = self.output.lower()
        return "association rejected" in text or "a-associate-rj" in text


class ScuPeer:
    """One SCU implementation; subclasses build the command lines."""

    name = "base"
    supports_tls = False

    def echo(self, port: int, calling: str = "TESTSCU", called: str = "MYONODE",
             host: str = "127.0.0.1", tls: TlsFiles | None = None) -> PeerRun:
        raise NotImplementedError

    def store(self, files: list[Path], port: int, calling: str = "TESTSCU",
              called: str = "MYONODE", host: str = "127.0.0.1",
              tls: TlsFiles | None = None, syntax: str | None = None) -> PeerRun:
        """Send ``files``; ``syntax``: their (compressed) transfer syntax, to be proposed."""
        raise NotImplementedError

    def _run(self, command: list[str], env: dict[str, str] | None = None) -> PeerRun:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                              stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        return PeerRun(done.returncode, done.stdout + done.stderr)

    def _no_tls(self, tls: TlsFiles | None) -> None:
        if tls is not None:
            raise ValueError(f"the {self.name} peer is not set up for TLS here")


class DcmtkPeer(ScuPeer):
    name = "dcmtk"
    supports_tls = True

    # Without it DCMTK waits for delayed ACKs (Nagle): ~45 ms per instance instead of ~5.
    _ENV = {"TCP_NODELAY": "1"}

    def __init__(self, storescu: Path, echoscu: Path) -> None:
        self.storescu, self.echoscu = storescu, echoscu

    def echo(self, port, calling="TESTSCU", called="MYONODE", host="127.0.0.1", tls=None):
        return self._run([str(self.echoscu), "-aet", calling, "-aec", called,
                          *self._tls(tls), host, str(port)], self._ENV)

    # storescu proposes uncompressed syntaxes unless told which other one to add.
    _PROPOSE = {
        "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.50": "-xy",
        "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.90": "-xv",
        "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.4.80": "-xt",
        "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.5": "-xr",
        "1.2.840.10008.1.2.1.99": "-xd",
    }

    def store(self, files, port, calling="TESTSCU", called="MYONODE", host="127.0.0.1",
              tls=None, syntax=None):
        propose = [self._PROPOSE[syntax]] if syntax else []
        # -R: propose only the SOP classes of the files
        return self._run([str(self.storescu), "-R", *propose, "-aet", calling, "-aec", called,
                          *self._tls(tls), host, str(port), *map(str, files)], self._ENV)

    @staticmethod
    def _tls(tls: TlsFiles | None) -> list[str]:
        if tls is None:
            return []
        identity = (["+tls", str(tls.key), str(tls.cert)] if tls.cert is not None
                    else ["+tla"])
        return [*identity, "+cf", str(tls.ca)]


class Dcm4chePeer(ScuPeer):
    name = "dcm4che"

    def __init__(self, storescu: Path) -> None:
        self.storescu = storescu

    def echo(self, port, calling="TESTSCU", called="MYONODE", host="127.0.0.1", tls=None):
        self._no_tls(tls)
        return self._run([str(self.storescu), "-c", f"{called}@{host}:{port}", "-b", calling])

    def store(self, files, port, calling="TESTSCU", called="MYONODE", host="127.0.0.1",
              tls=None, syntax=None):
        self._no_tls(tls)
        # dcm4che proposes each file's own transfer syntax by itself.
        return self._run([str(self.storescu), "-c", f"{called}@{host}:{port}", "-b", calling,
                          *map(str, files)])


class PynetdicomPeer(ScuPeer):
    name = "pynetdicom"

    def echo(self, port, calling="TESTSCU", called="MYONODE", host="127.0.0.1", tls=None):
        self._no_tls(tls)
        return self._run([sys.executable, "-m", "pynetdicom", "echoscu", host, str(port),
                          "-aet", calling, "-aec", called, "-v"])

    def store(self, files, port, calling="TESTSCU", called="MYONODE", host="127.0.0.1",
              tls=None, syntax=None):
        self._no_tls(tls)
        # -cx proposes the files' own transfer syntaxes. The app takes one path: send a
        # folder of links to the files.
        with tempfile.TemporaryDirectory() as folder:
            for index, path in enumerate(files):
                os.symlink(Path(path).resolve(), Path(folder) / f"{index:06d}.dcm")
            return self._run([sys.executable, "-m", "pynetdicom", "storescu", host,
                              str(port), folder, "-aet", calling, "-aec", called, "-cx",
                              "-v"])


def _executables(name: str) -> list[Path]:
    """Every executable called ``name`` on PATH (and /usr/bin), in PATH order."""
    found: list[Path] = []
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK) and candidate not in found:
            found.append(candidate)
    return found


def _kind(tool: Path) -> str:
    """dcm4che, pynetdicom or dcmtk (by the script's text, else by ``--version``)."""
    try:
        head = tool.read_bytes()[:8192]
    except OSError:
        return "unknown"
    if b"dcm4che" in head:
        return "dcm4che"
    if b"pynetdicom" in head or head.startswith(b"#!") and b"python" in head.split(b"\n")[0]:
        return "pynetdicom"
    try:
        version = subprocess.run([str(tool), "--version"], capture_output=True, text=True,
                                 timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return "dcmtk" if "dcmtk" in (version.stdout + version.stderr).lower() else "unknown"


def _find(kind: str, name: str) -> Path | None:
    for tool in _executables(name):
        if _kind(tool) == kind:
            return tool
    return None


def find_peer(wanted: str) -> ScuPeer | None:
    """The peer of that kind (``auto``: dcm4che, else DCMTK), or None when not installed."""
    if wanted == "pynetdicom":
        return PynetdicomPeer()
    if wanted in ("dcm4che", "auto"):
        override = os.environ.get(DCM4CHE_ENV)
        tool = Path(override) if override else _find("dcm4che", "storescu")
        if tool is not None and tool.is_file():
            return Dcm4chePeer(tool)
        if wanted == "dcm4che":
            return None
    storescu, echoscu = _find("dcmtk", "storescu"), _find("dcmtk", "echoscu")
    if storescu is not None and echoscu is not None:
        return DcmtkPeer(storescu, echoscu)
    return None


def scu_peer() -> ScuPeer:
    """The SCU for this test run; skips (fails under CI, or when named explicitly) if absent."""
    wanted = os.environ.get(PEER_ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "dcmtk", "dcm4che", "pynetdicom"):
        pytest.fail(f"{PEER_ENV}={wanted!r}: expected dcmtk, dcm4che, pynetdicom or auto")
    peer = find_peer(wanted)
    if peer is not None:
        return peer
    message = (f"no DICOM SCU peer found ({PEER_ENV}={wanted}); install DCMTK "
               "(apt-get install dcmtk) or put dcm4che's storescu on PATH")
    if wanted != "auto" or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def tls_peer(peer: ScuPeer) -> ScuPeer:
    """A peer that can do TLS: ``peer`` itself, else DCMTK (skip/fail as ``scu_peer``)."""
    if peer.supports_tls:
        return peer
    dcmtk = find_peer("dcmtk")
    if dcmtk is not None:
        return dcmtk
    message = "TLS tests need DCMTK (apt-get install dcmtk)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class ThrowawayPki:
    """A throwaway CA with a server certificate (127.0.0.1, localhost) and a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_throwaway_pki(folder: Path) -> ThrowawayPki:
    """Generate the PKI with the ``openssl`` command line tool (skip/fail when absent)."""
    tool = shutil.which("openssl")
    if tool is None:
        message = "the TLS tests need the openssl command line tool"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([tool, *args], cwd=folder, check=True, capture_output=True,
                       timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key",
        "-out", "ca.pem", "-subj", "/CN=myonode test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    extensions = {
        "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, ext in extensions.items():
        (folder / f"{name}.ext").write_text("basicConstraints=CA:FALSE\n" + ext)
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN=myonode test {name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext")
    return ThrowawayPki(ca=folder / "ca.pem", server_cert=folder / "server.pem",
                   server_key=folder / "server.key", client_cert=folder / "client.pem",
                   client_key=folder / "client.key")


def mr_dataset(rows: int = 8, columns: int = 8, study_uid: str | None = None) -> Dataset:
    """A minimal, valid MR Image Storage instance (with file meta) as a scanner would send."""
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.PatientID = "PEER-TEST"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * columns, dtype=np.uint16) % 4096).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds
