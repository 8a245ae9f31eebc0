"""Files that are never half-written: atomic writes, their temporaries, and run-folder locks."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def write_atomic(path: str | Path, data: bytes | Callable[[Path], None]) -> None:
    """Write ``data`` (bytes, or a function that writes a given path) through a temporary file in
    the same folder, then rename: a kill or a full disk leaves the previous file intact.

    The temporary name carries the process id (``.NAME.PID.part``), so files left by a killed
    process can be told from a running one's (``stale_temporaries``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except Exception as exc:  # writers report a full disk in their own ways (torch.save: RuntimeError)
        kept = " (the previous file is kept)" if path.exists() else ""
        reason = getattr(exc, "strerror", None) or (
            "No space left on device" if _nearly_full(path.parent) else f"{type(exc).__name__}: {exc}")
        raise OSError(getattr(exc, "errno", None), f"cannot write {path}: {reason}{kept}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def stale_temporaries(folder: str | Path) -> list[Path]:
    """Temporary files of ``write_atomic`` in ``folder`` whose process no longer runs."""
    stale = []
    for part in Path(folder).glob(".*.part"):
        pid = part.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _running(int(pid)):
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
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
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


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
