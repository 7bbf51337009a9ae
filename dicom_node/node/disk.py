"""Free disk space of the node's data folder, for the receive watermark and the metrics.

A full disk must never leave a half-written instance that was acknowledged: the storage SCP
asks ``has_room`` before it writes and answers Out of Resources instead. Callers use
``disk.free_bytes`` through the module so tests can substitute it.
"""

from __future__ import annotations

import os
from pathlib import Path


def free_bytes(path: Path) -> int:
    """Bytes available to this (unprivileged) process on the file system holding ``path``;
    a path that does not exist yet is measured at its nearest existing parent."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stats = os.statvfs(probe)
    return stats.f_bavail * stats.f_frsize


def has_room(path: Path, incoming_bytes: int, min_free_bytes: int) -> bool:
    """True when writing ``incoming_bytes`` under ``path`` keeps ``min_free_bytes`` free."""
    return free_bytes(path) - incoming_bytes >= min_free_bytes
