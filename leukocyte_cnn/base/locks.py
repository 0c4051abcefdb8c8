"""One job makes a shared artifact; jobs that want it at the same moment wait, then reuse it.

The fold jobs of one experiment (a SLURM array, ``docs/gpu_and_cluster.md``) start together
and each resolves the same synthetic set, split file, balanced folds, mask sets, source
checkpoint and run folder. Every maker of such an artifact follows one pattern:

    if artifact is made and matches:            # the common case: no lock file is touched
        reuse it
    with artifact_lock(artifact, "the split of X"):
        if artifact is made and matches:        # made by the job that held the lock
            reuse it
        else:
            make it (atomically, as before)

:func:`artifact_lock` takes an exclusive ``fcntl.flock`` on a hidden lock file beside the
artifact (``<folder>/.<name>.lock``: hidden so that no glob of the folder, such as
``fold_*`` or ``*.png``, ever picks it up), blocking, with one line when it has to wait. The
lock is released when the block ends or the process dies (the kernel drops it), so a killed
job never leaves a stale lock behind; lock files are left in place (removing one while
another job waits on it would let a third job in). ``flock`` coordinates processes on one
machine and, on Linux, NFS clients too (it is mapped to POSIX byte-range locks there since
kernel 2.6.12); on a file system without locking one line says so and the job goes on
unlocked (every maker still writes atomically, so the worst case is work done twice).
The lock is re-entrant within a thread (a maker that calls another maker of the same
artifact does not wait for itself). In a folder this job may not write to (a read-only data
set, split or mask folder) there is nothing to lock: it can only reuse what is there.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locking (every maker still writes atomically)
    fcntl = None

_held = threading.local()  # lock files this thread holds, for re-entrance


def lock_path(artifact: str | os.PathLike) -> Path:
    """The lock file of ``artifact``: ``<its folder>/.<its name>.lock``."""
    artifact = Path(artifact)
    return artifact.with_name(f".{artifact.name}.lock")


@contextlib.contextmanager
def artifact_lock(artifact: str | os.PathLike, what: str | None = None,
                  say: Callable[[str], None] = print) -> Iterator[bool]:
    """Hold the lock of ``artifact`` for the block; yields whether this job had to wait (then
    another job was making it: look again before making it).

    ``what`` names the artifact in the waiting line (default: its path); ``say`` prints it.
    """
    path = lock_path(artifact)
    key = os.path.realpath(path)
    held = getattr(_held, "paths", None)
    if held is None:
        held = _held.paths = set()
    if fcntl is None or key in held:
        yield False
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        # A folder this job cannot write to (read-only, or a file in the way): it cannot make
        # the artifact there either, only reuse what is there; if it tries, the maker's own
        # write stops it with the one line that names the real problem.
        yield False
        return
    try:
        waited = False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {what or artifact} being made by another job (lock {path})")
            waited = True
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. ENOLCK: an NFS mount without its lock service
            say(f"note: {path}: file locks do not work here ({exc.strerror or exc}); jobs "
                f"started together may each make {what or artifact} (atomically)")
            yield False
            return
        held.add(key)
        try:
            yield waited
        finally:
            held.discard(key)
    finally:
        os.close(handle)  # releases the lock
