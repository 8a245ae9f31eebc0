"""One checkpoint file per save, holding everything a run needs to continue exactly; atomic writes."""

from __future__ import annotations

import fcntl
import logging
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """Every random state of this process: torch (CPU and CUDA), numpy, python, and our generators."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_lists(random.getstate()),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_to_tuples(state["python"]))
    for name, g in generators.items():
        g.set_state(state["generators"][name])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


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
    except OSError as exc:
        kept = " (the previous file is kept)" if path.exists() else ""
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}{kept}") from None
    finally:
        tmp.unlink(missing_ok=True)


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


def save(path: str | Path, checkpoint: dict) -> None:
    """Write atomically (see ``write_atomic``)."""
    write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def load(path: str | Path) -> dict:
    """Read a checkpoint written by ``save`` (tensors and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
