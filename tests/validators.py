"""Run the real DICOM validators the reporting tests rely on.

dciodvfy (dicom3tools), PixelMed's DicomInstanceValidator / DicomSRValidator and dcmjs are
independent implementations of the standard; a SEG or SR that all of them accept is one that
PACS and viewers will take. A missing tool skips the check on a developer machine, but fails
it under CI (environment variable CI set), so CI can never pass without validating.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

JS_DIR = Path(__file__).parent / "js"
PIXELMED_JAR_NAMES = ("pixelmed.jar",)
PIXELMED_PACKAGE = "libpixelmed-java"
# PixelMed's XSLT rules exceed Java 17's default XPath complexity limits.
JAVA_XPATH_OPTIONS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)
# One JVM for many files: PixelMed's command-line validators take a single file each and
# compile their XSLT rules on every start (several seconds). Run as a single-file source
# program (java Foo.java); args are "seg:PATH" or "sr:PATH"; output per file after "=== PATH".
PIXELMED_BATCH = """
import com.pixelmed.dicom.AttributeList;
import com.pixelmed.validate.DicomInstanceValidator;
import com.pixelmed.validate.DicomSRValidator;

public class PixelMedBatch {
    public static void main(String[] args) throws Exception {
        DicomInstanceValidator instances = null;
        DicomSRValidator reports = null;
        for (String arg : args) {
            int colon = arg.indexOf(':');
            String kind = arg.substring(0, colon);
            String path = arg.substring(colon + 1);
            String out;
            if (kind.equals("sr")) {
                if (reports == null) reports = new DicomSRValidator();
                out = reports.validate(path);
            } else {
                if (instances == null) instances = new DicomInstanceValidator();
                AttributeList list = new AttributeList();
                list.read(path);
                out = instances.validate(list);
            }
            System.out.println("=== " + path);
            System.out.print(out);
            System.out.flush();
        }
    }
}
"""
SEPARATOR = "=== "


def in_ci() -> bool:
    """True when running under CI, where every validator must be present."""
    return bool(os.environ.get("CI"))


def missing_tool(what: str) -> NoReturn:
    """Skip locally, fail under CI: a validator that is not installed."""
    message = f"{what} is not installed (.ci/run installs it)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def dciodvfy_path() -> str:
    path = shutil.which("dciodvfy")
    if path is None:
        missing_tool("dciodvfy (Debian package dicom3tools)")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy reports for one file (warnings are not counted)."""
    run = subprocess.run(
        [dciodvfy_path(), str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def pixelmed_jar() -> Path | None:
    """The PixelMed jar, from the Debian package's file list or the usual location."""
    candidates = []
    if shutil.which("dpkg"):
        listing = subprocess.run(
            ["dpkg", "-L", PIXELMED_PACKAGE], capture_output=True, text=True, timeout=30,
            check=False,
        )
        candidates += [Path(line) for line in listing.stdout.splitlines()]
    candidates.append(Path("/usr/share/java/pixelmed.jar"))
    for candidate in candidates:
        if candidate.name in PIXELMED_JAR_NAMES and candidate.is_file():
            return candidate
    return None


def pixelmed_missing() -> str:
    """Why PixelMed cannot run here ("" when it can): check before :func:`start_pixelmed`."""
    if pixelmed_jar() is None:
        return "PixelMed (Debian package libpixelmed-java)"
    if shutil.which("java") is None:
        return "java (Debian package default-jre-headless)"
    return ""


@dataclass
class PixelMedRun:
    """A PixelMed batch running in the background (it takes tens of seconds)."""

    process: subprocess.Popen
    workdir: tempfile.TemporaryDirectory
    paths: list[Path]

    def stop(self) -> None:
        """End the JVM if its reports were never collected (e.g. tests deselected)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
        self.workdir.cleanup()

    def reports(self, timeout: float = 600) -> dict[Path, str]:
        """Validator output per file; raises if the JVM failed."""
        out, _ = self.process.communicate(timeout=timeout)
        self.workdir.cleanup()
        if self.process.returncode != 0:
            code = self.process.returncode
            raise AssertionError(f"PixelMed batch failed ({code}):\n{out[-4000:]}")
        reports: dict[Path, str] = {}
        current = None
        for line in out.splitlines(keepends=True):
            if line.startswith(SEPARATOR):
                current = Path(line[len(SEPARATOR):].strip())
                reports[current] = ""
            elif current is not None:
                reports[current] += line
        missing = [p for p in self.paths if p not in reports]
        if missing:
            raise AssertionError(f"PixelMed gave no report for {missing}:\n{out[-4000:]}")
        return reports


def start_pixelmed(segs: list[Path], srs: list[Path]) -> PixelMedRun:
    """Start PixelMed's DicomInstanceValidator on ``segs`` and DicomSRValidator on ``srs``."""
    jar, java = pixelmed_jar(), shutil.which("java")
    if jar is None or java is None:
        raise FileNotFoundError(pixelmed_missing())
    workdir = tempfile.TemporaryDirectory(prefix="pixelmed-")
    source = Path(workdir.name) / "PixelMedBatch.java"
    source.write_text(PIXELMED_BATCH, encoding="utf-8")
    paths = [Path(p) for p in [*segs, *srs]]
    args = [f"seg:{p}" for p in segs] + [f"sr:{p}" for p in srs]
    process = subprocess.Popen(
        [java, *JAVA_XPATH_OPTIONS, "-cp", str(jar), str(source), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return PixelMedRun(process, workdir, paths)


def pixelmed_errors(report: str) -> list[str]:
    """Error lines of a PixelMed report (it exits 0 even when it finds errors)."""
    bad = ("Error", "Internal Error", "Exception", "IOD (SOP Class) unrecognized")
    return [line for line in report.splitlines() if line.strip().startswith(bad)]


def dcmjs_segments(seg: Path, sources: tuple[Path, ...] = ()) -> dict:
    """What dcmjs (OHIF's DICOM library) finds in a SEG; see tests/js/seg_segments.js."""
    node = shutil.which("node")
    if node is None:
        missing_tool("node")
    if not (JS_DIR / "node_modules" / "dcmjs").is_dir():
        missing_tool("dcmjs (npm ci --prefix tests/js)")
    run = subprocess.run(
        [node, str(JS_DIR / "seg_segments.js"), str(seg), *map(str, sources)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if run.returncode != 0:
        raise AssertionError(f"dcmjs could not read {seg}:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout)
