"""Where medsr computes: the device, what the CPU does natively, the memory left, and the process
group that torchrun starts (one place for each, used by inference, training and the command line)."""

from __future__ import annotations

import os
import re

import psutil
import torch
import torch.distributed as dist


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", str(device)):
        raise ValueError(f"device {str(device)!r}: use auto, cpu, cuda or cuda:N")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for, but PyTorch sees no CUDA device")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo (Linux); elsewhere unknown, taken as no."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (else it is emulated, and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def available_memory() -> int | None:
    """Bytes of host memory available now (psutil; on Linux the kernel's ``MemAvailable``); None where
    it cannot be read."""
    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError):
        return None


# ---------------------------------------------------------------------------------------------
# torchrun


def world_size() -> int:
    """How many processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_process_group(backend: str | None = None) -> tuple[int, int]:
    """(rank, world size); under torchrun with several processes, starts the process group first
    (``backend``: by default NCCL where CUDA is present, else gloo)."""
    size = world_size()
    if size <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), size


def rank_device(device: str | torch.device, size: int) -> torch.device:
    """The device asked for; under torchrun with CUDA, this rank's GPU (one per rank)."""
    chosen = pick_device(device)
    if size > 1 and chosen.type == "cuda":
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(chosen)
    return chosen


def leave_process_group() -> None:
    """Leave together, then end the process group. Together: torchrun stops every process as soon as
    one ends with a failure status, so a process whose share had a bad file must not end while the
    first one still writes the report for all. Ended: a process that exits with gloo's threads still
    running is aborted ("terminate called without an active exception")."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    except Exception:  # noqa: BLE001 (another process is gone already: nothing to wait for)
        pass
    dist.destroy_process_group()
