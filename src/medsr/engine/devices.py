"""Where medsr computes: the device, what the CPU does natively, the memory left, and the process
group that torchrun starts (one place for each, used by inference, training and the command line)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

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
    """Bytes of memory available now: the host's (psutil; on Linux the kernel's ``MemAvailable``), or
    less where this process's cgroup (a container, a SLURM job) has a lower limit; None where neither
    can be read."""
    try:
        host = int(psutil.virtual_memory().available)
    except (OSError, RuntimeError):
        host = None
    limited = [room for room in (host, _cgroup_room()) if room is not None]
    return min(limited) if limited else None


CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number (v2: "max")


def _cgroups(controller: str) -> Iterator[tuple[Path, bool]]:
    """(folder, is v2) of this process's cgroup for ``controller`` ("memory", "cpu") and each of its
    ancestors up to the hierarchy's root (in a cgroup namespace the group is the root itself);
    nothing off Linux."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        v2 = controllers == ""
        if not v2 and controller not in controllers.split(","):
            continue
        base = CGROUP_ROOT if v2 else CGROUP_ROOT / controller
        folder = base / path.lstrip("/")
        for group in (folder, *folder.parents):
            yield group, v2
            if group == base:
                break


def _cgroup_room() -> int | None:
    """The least room under the memory limits of this process's cgroup and its ancestors: limit
    minus usage, where page cache (file pages, active or not, which the kernel reclaims under
    pressure, as the host's MemAvailable counts them) is not counted as used. None without a limit
    (or off Linux)."""
    v2_names = ("memory.max", "memory.current", ("inactive_file", "active_file"))
    v1_names = ("memory.limit_in_bytes", "memory.usage_in_bytes", ("total_inactive_file", "total_active_file"))
    rooms = [_room_in(group, *(v2_names if v2 else v1_names)) for group, v2 in _cgroups("memory")]
    found = [room for room in rooms if room is not None]
    return min(found) if found else None


def _room_in(group: Path, limit_name: str, usage_name: str, cache_names: tuple[str, ...]) -> int | None:
    try:
        limit = (group / limit_name).read_text().strip()
        if not limit.isdigit() or int(limit) >= UNLIMITED:
            return None
        usage = int((group / usage_name).read_text())
        stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
        cache = sum(int(stat.get(name, 0)) for name in cache_names)  # file pages the kernel can reclaim
    except (OSError, ValueError):
        return None
    return max(int(limit) - usage + cache, 0)


# ---------------------------------------------------------------------------------------------
# CPU threads


def usable_cpus() -> int:
    """The CPUs this process may compute on: its affinity (taskset, a SLURM allocation), bounded by
    its cgroup's CPU quota (a container's ``--cpus``), rounded up; at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time per period that this process's cgroup (or an ancestor) allows; None
    without a quota. cgroup v2: ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"); v1: ``cpu.cfs_quota_us``
    over ``cpu.cfs_period_us`` (-1 for none)."""
    found = [q for q in (_quota_in(group, v2) for group, v2 in _cgroups("cpu")) if q is not None]
    return min(found) if found else None


def _quota_in(group: Path, v2: bool) -> float | None:
    try:
        if v2:
            quota, period = (group / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        quota_us = int((group / "cpu.cfs_quota_us").read_text())
        return None if quota_us < 0 else quota_us / int((group / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


BUSY_SAMPLE = 0.25  # seconds over which the other processes' CPU use is read


def busy_cpus() -> int:
    """CPUs of this process's affinity that other work keeps busy now: their use over a quarter of a
    second, in whole CPUs (0 where it cannot be read). Read before this process computes, it counts
    the others; unlike the load average it does not remember a run that just ended."""
    try:
        mine = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mine = None
    try:
        use = psutil.cpu_percent(interval=BUSY_SAMPLE, percpu=True)
    except (OSError, RuntimeError):
        return 0
    chosen = [use[i] for i in mine if i < len(use)] if mine else use
    return round(sum(chosen) / 100)


def fit_threads(threads: int | None = None) -> int:
    """Set PyTorch's compute threads: ``threads``, or where none is given (and neither
    ``OMP_NUM_THREADS`` nor ``MKL_NUM_THREADS`` says) the CPUs this process may use
    (``usable_cpus()``) less those other work keeps busy, at least one. PyTorch's own default
    counts the host's cores: in a container, a SLURM share or beside another job its threads
    outnumber the free CPUs, and every barrier waits for a descheduled thread (docs/BENCHMARKS.md:
    2 threads beside one busy process took 2.9x their idle time, 1 thread 1.05x). Returns the number."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads {threads!r}: a whole number of at least 1")
        torch.set_num_threads(threads)
    elif not any(os.environ.get(name) for name in THREAD_VARIABLES):
        free = max(1, usable_cpus() - busy_cpus())
        torch.set_num_threads(min(torch.get_num_threads(), free))
    return torch.get_num_threads()


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
