"""Who may read what the node writes: its own user and group, nobody else.

Why: the data folder holds patient data (received images, results, the state database with
UIDs and AE titles). One rule holds for everything under it, whatever umask the node was
started with: folders ``0750`` and files ``0640`` (the spool's mode), i.e. the node's user
reads and writes, its group only reads (a backup or monitoring account can be put in it),
others get nothing. The node creates its own folders and files with exactly these modes,
runs with umask ``027`` (so what libraries and the job's child process create gets them
too: SQLite's ``-wal``/``-shm``, the pipeline's outputs), and at start-up tightens whatever
an earlier version, a restore from backup or a hand-made folder left more open.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

DIR_MODE = 0o750
FILE_MODE = 0o640
UMASK = 0o027  # 0777 & ~UMASK == DIR_MODE, 0666 & ~UMASK == FILE_MODE


def restrict_umask() -> int:
    """Give this process the node's umask (for ``myonode serve``); returns the previous one."""
    return os.umask(UMASK)


def make_dir(path: Path, on_created: Callable[[Path], None] | None = None) -> Path:
    """``path`` and its missing parents, each created with exactly ``DIR_MODE``;
    ``on_created`` is called for each folder made (the spool fsyncs its parent)."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # made meanwhile by another thread; its mode is its creator's business
        os.chmod(folder, DIR_MODE)  # mkdir's mode is cut by the umask
        if on_created is not None:
            on_created(folder)
    return path


def open_private(path: Path, flags: int) -> int:
    """``os.open`` of a file that, when created, has exactly ``FILE_MODE``."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tighten(root: Path) -> list[Path]:
    """Take away what the rule does not allow from ``root`` and everything under it (symbolic
    links are left alone); returns what was changed."""
    changed = []
    for folder, _dirs, files in os.walk(root):  # every folder is once ``folder`` of a step
        here = Path(folder)
        for path in (here, *(here / name for name in files)):
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue  # removed meanwhile (a temporary file)
            if stat.S_ISLNK(info.st_mode):
                continue
            allowed = DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
            mode = stat.S_IMODE(info.st_mode)
            if mode & ~allowed:
                os.chmod(path, mode & allowed)
                changed.append(path)
    return changed
