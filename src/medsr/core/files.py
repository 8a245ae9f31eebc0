"""Files that are never half-written: atomic writes, their temporaries, and run-folder locks."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

if sys.platform == "win32":  # msvcrt locks instead of fcntl
    import msvcrt
else:
    import fcntl

log = logging.getLogger(__name__)


def write_atomic(path: str | Path, data: bytes | Callable[[Path], None], *,
                 verify: Callable[[Path], None] | None = None, overwrite: bool = True) -> None:
    """Write ``data`` (bytes, or a function that writes a given path) through a temporary file in
    the same folder, check it (``verify(tmp)``, which raises to refuse it), then move it into place:
    a kill or a full disk leaves the previous file intact. Without ``overwrite`` an existing file is
    never replaced, not even one that appeared while this one was written (FileExistsError).
    Every medsr output goes through here.

    The temporary name carries the process id and ends with the file's own suffix
    (``.NAME.PID.part.png``: writers that choose the format by name see it), so files left by a
    killed process can be told from a running one's (``stale_temporaries``).
    """
    path = Path(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data)
        if verify is not None:
            verify(tmp)
        _move_into_place(tmp, path, overwrite)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"{path}: already exists (created while this file was written); "
                                            "kept it") from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}{_kept(path)}") from None
    except Exception as exc:
        if _nearly_full(path.parent):  # writers report a full disk in their own ways (torch.save: RuntimeError)
            raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device{_kept(path)}") from None
        if verify is not None:
            raise  # the data was refused, by its writer or by the check: their error says why
        raise OSError(None, f"cannot write {path}: {type(exc).__name__}: {exc}{_kept(path)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _kept(path: Path) -> str:
    return " (the previous file is kept)" if path.exists() else ""


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the name exists: two runs never replace each other's files
    except FileExistsError:
        raise
    except OSError:  # file systems without hard links
        if path.exists():
            raise FileExistsError(errno.EEXIST, str(path)) from None
        os.replace(tmp, path)


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def stale_temporaries(folder: str | Path) -> list[Path]:
    """Temporary files of ``write_atomic`` in ``folder`` whose process no longer runs."""
    stale = []
    for part in Path(folder).glob(".*.part*"):
        found = re.fullmatch(r"\..+\.(\d+)\.part(\..*)?", part.name)
        if found and not _running(int(found[1])):
            stale.append(part)
    return stale


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder/.lock`` for the life of a run: a second run into the folder is refused,
    naming the process that holds it. The lock goes with the process, however it ends."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+")  # noqa: SIM115 (held until the run ends)
    try:
        try:
            _lock(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ValueError(f"{folder}: another run is using this folder (process {holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        for stale in stale_temporaries(folder):  # left by a killed run: never complete, never needed
            log.warning("removing %s, left by a run that was killed while saving", stale)
            stale.unlink(missing_ok=True)
        yield
    finally:
        handle.close()


def _lock(handle) -> None:
    """An exclusive lock on an open file, or OSError when another process holds it."""
    if sys.platform == "win32":
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
