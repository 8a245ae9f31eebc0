"""Reading weights from the checkpoint files of the ecosystem (``.pth``, ``.pt``, ``.safetensors``,
wrapped or bare), checking that they fit a network, and building the generator they describe."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from medsr.nets.rrdbnet import RRDBNet, rrdbnet, rrdbnet_from_state_dict


class WeightsError(RuntimeError):
    """A checkpoint cannot be found, read, or does not fit the network."""


# Wrappers under which the ecosystem stores generator weights, most specific first
# (``net_g_ema``: a medsr training checkpoint).
_WRAPPER_KEYS = ("net_g_ema", "params_ema", "params", "state_dict")
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read generator weights from ``.pth``/``.pt`` (weights only) or ``.safetensors``.

    Unwraps ``params_ema``, ``params`` or ``state_dict`` and strips ``module.`` / ``_orig_mod.``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            raw: object = load_file(path)  # offsets in the header are checked against the file's size
        else:
            raw = _torch_load(path)
    except Exception as exc:  # the libraries raise many types for a bad file
        raise WeightsError(f"{path}: cannot read checkpoint: not a PyTorch or safetensors file of tensors, or "
                           f"damaged ({type(exc).__name__}: {exc})") from None
    return unwrap_state_dict(raw, source=path)


def _torch_load(path: Path) -> object:
    """Weights only, memory-mapped: a small file that declares huge tensors cannot make us allocate
    them (the mapping must fit the file). Files of the legacy format cannot be mapped."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_state_dict(raw: object, *, source: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """Pick the generator weights out of a loaded checkpoint object and normalise key names."""
    if isinstance(raw, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw:
        raise WeightsError(f"{source}: holds no state dict of tensors")
    state = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{source}: entry {key!r} is not a tensor")
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        state[key] = value
    return state


def check_fits(net: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str | Path) -> None:
    """Raise a WeightsError naming the first tensor that is missing, unexpected, misshapen or not finite."""
    expected = net.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise WeightsError(f"{source}: missing tensor {key!r}")
        if state[key].shape != tensor.shape:
            raise WeightsError(
                f"{source}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"the network needs {tuple(tensor.shape)}"
            )
        if not state[key].is_floating_point() and tensor.is_floating_point():
            raise WeightsError(f"{source}: tensor {key!r} holds {str(state[key].dtype).removeprefix('torch.')} "
                               "values; weights must be floating point")
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise WeightsError(f"{source}: tensor {key!r} holds NaN or infinite values")
    for key in state:
        if key not in expected:
            raise WeightsError(f"{source}: unexpected tensor {key!r}")


def load_generator(path: str | Path, *, preset: str | None = None) -> RRDBNet:
    """Build an RRDBNet for the checkpoint at ``path`` and load it strictly (CPU, eval mode).

    With ``preset``, the weights must fit that preset; otherwise the shape is read from the file.
    """
    return generator_from_state(read_state_dict(path), source=path, preset=preset)


def generator_from_state(state: dict[str, torch.Tensor], *, source: str | Path, preset: str | None = None) -> RRDBNet:
    try:
        net = rrdbnet(preset) if preset else rrdbnet_from_state_dict(state)
    except ValueError as exc:
        raise WeightsError(f"{source}: {exc}") from None
    check_fits(net, state, source=source)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval()
