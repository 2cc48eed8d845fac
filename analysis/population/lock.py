"""One writer per population index: an exclusive, non-blocking `flock` on DIR/.writer.lock.

`scan` and `compact` rewrite the catalog, the parts and the neighbour index, and sweep the dot-temporaries a
killed writer left; two at once would sweep each other's temporaries and publish each other's half-views. The
lock is held for the whole write and released by the kernel when the process ends (a killed scan never leaves a
stale lock). A second writer is refused at once with one line naming the directory and the holder's pid (the
lock file holds "PID COMMAND"); the file itself is never removed (removing it would let a third writer lock a
new file while the first still holds the old one).

Readers take no lock: every file is published by an atomic rename (parts before the catalog, faiss files
before the manifest that names them), so a reader sees the previous index or the new one (`query` retries a
read that a concurrent publication overtook). `flock` binds processes on one host; on a network filesystem
(NFS) it may not bind writers on different hosts: run one scan per index there.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from analysis.population.store import LOCK_NAME, IndexStore, PopulationIndexError

_held: dict[str, int] = {}  # resolved index folder -> the thread of this process that holds its lock
_guard = threading.Lock()


class IndexBusyError(PopulationIndexError):
    """Another scan or compaction holds the index's writer lock."""


def holder(root: Path) -> str:
    """What the lock file says about its holder ("PID COMMAND"), or "" when it is empty or unreadable."""
    try:
        return (root / LOCK_NAME).read_text(errors="replace").strip()[:80]
    except OSError:
        return ""


def _busy(path: Path, pid: str, what: str) -> IndexBusyError:
    who = f"another {what or 'scan'} (pid {pid})" if pid.isdigit() else "another scan"
    return IndexBusyError(f"{path}: {who} is writing this index; wait for it to finish, or scan into another "
                          "--out directory")


@contextmanager
def writer_lock(root: str | os.PathLike[str], command: str = "scan") -> Iterator[Path]:
    """Hold DIR's writer lock for the block (DIR is created if absent; a non-index folder is refused first).

    Re-entrant in the thread that holds it (the CLI takes it before its progress bar, then `scan` again);
    another thread of this process is refused like another process.
    """
    path = Path(root)
    IndexStore.check_target(path)  # never litter a folder that is not ours with a lock file
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _guard:
        owner = _held.get(key)
        if owner is None:
            _held[key] = threading.get_ident()
    if owner == threading.get_ident():
        yield path
        return
    if owner is not None:
        raise _busy(path, str(os.getpid()), holder(path).partition(" ")[2])
    try:
        with _flock(path, command):
            yield path
    finally:
        with _guard:
            _held.pop(key, None)


@contextmanager
def _flock(path: Path, command: str) -> Iterator[None]:
    lock = path / LOCK_NAME
    try:  # never through a link (an index is untrusted: the truncation below would hit the link's target)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise PopulationIndexError(f"{lock}: cannot open the writers' lock ({exc.strerror}); remove it if it is "
                                   "not a plain file") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PopulationIndexError(f"{lock}: not a plain file; remove it (it holds no data)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PopulationIndexError(f"{path / LOCK_NAME}: cannot lock ({exc.strerror})") from None
            pid, _, what = holder(path).partition(" ")
            raise _busy(path, pid, what) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield
        os.ftruncate(fd, 0)  # no stale pid for the next writer's refusals
    finally:
        os.close(fd)  # releases the lock (the kernel does it for a killed process)
