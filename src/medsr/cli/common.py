"""What every command shares."""

from __future__ import annotations

import sys


def error(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"error: {message}", file=sys.stderr)


def ranks_and_device(device: str):
    """torch.distributed under torchrun with several processes (gloo: it only gathers results; each
    rank works alone), else None; and this rank's device."""
    from medsr.engine.devices import join_process_group, rank_device

    _, size = join_process_group("gloo")
    import torch.distributed

    return (torch.distributed if size > 1 else None), rank_device(device, size)
