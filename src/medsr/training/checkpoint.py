"""One checkpoint file per save, holding everything a run needs to continue exactly; atomic writes."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch

from medsr.core import files


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """Every random state of this process: torch (CPU and CUDA), numpy, python, and our generators."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # legacy=True, the default: the (name, keys, pos, ...) tuple
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


SEALED = ("net_g", "net_g_ema", "net_d")  # the weights a damaged file would silently change


def tensor_digest(checkpoint: dict) -> str:
    """SHA-256 over the networks' tensors (names, shapes, dtypes and bytes, in name order)."""
    digest = hashlib.sha256()
    for part in SEALED:
        for name, tensor in sorted((checkpoint.get(part) or {}).items()):
            digest.update(f"{part}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def all_tensors_digest(value: object, digest: hashlib._Hash | None = None, where: str = "") -> str:
    """SHA-256 over every tensor a checkpoint holds (networks, optimiser moments, random states),
    with its place in the nesting, in a fixed order: a damaged optimiser state trains on silently."""
    top = digest is None
    digest = hashlib.sha256() if digest is None else digest
    if isinstance(value, torch.Tensor):
        digest.update(f"{where}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            if not (top and key in ("digest", "all_digest")):
                all_tensors_digest(value[key], digest, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            all_tensors_digest(item, digest, f"{where}[{index}]")
    return digest.hexdigest()


def save(path: str | Path, checkpoint: dict) -> None:
    """Write atomically (see ``write_atomic``), with the digest of its networks' tensors and one of
    every tensor it holds."""
    checkpoint = {**checkpoint, "digest": tensor_digest(checkpoint), "all_digest": all_tensors_digest(checkpoint)}
    files.write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def load(path: str | Path) -> dict:
    """Read a checkpoint written by ``save`` (tensors and plain containers only), and check that
    its networks' tensors still match the digest written with them."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a medsr training checkpoint")
    damaged = ("digest" in checkpoint and checkpoint["digest"] != tensor_digest(checkpoint)) or (
        "all_digest" in checkpoint and checkpoint["all_digest"] != all_tensors_digest(checkpoint))
    if damaged:
        raise ValueError(f"{path}: the checkpoint is damaged (its tensors no longer match the digest written "
                         "with them); use an earlier checkpoint (run.keep_every keeps them)")
    return checkpoint
