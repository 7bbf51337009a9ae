"""Every benchmark script starts: its imports resolve when run as ``python benchmarks/X.py``.

Benchmarks run rarely and by hand, so an import that breaks (a helper module shadowing a
package, a moved module) would otherwise go unnoticed until someone needs the figures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py")
                 if p.name not in {"bench_common.py", "realism_measures.py"})


def test_every_script_is_listed() -> None:
    assert {"accuracy.py", "end_to_end.py", "ff_methods.py", "realism.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_starts(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
