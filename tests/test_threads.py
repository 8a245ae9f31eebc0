"""Threads that fit the room (issue 36): never more compute threads than the CPUs this process may
use, read from its affinity and its cgroup's CPU quota (fake cgroup files here), unless told."""

from __future__ import annotations

import os

import pytest
import torch

from medsr.engine import devices


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _cgroups(tmp_path, monkeypatch, proc: str, files: dict[str, str]):
    monkeypatch.setattr(devices, "PROC_CGROUP", tmp_path / "proc-cgroup")
    monkeypatch.setattr(devices, "CGROUP_ROOT", tmp_path / "cg")
    (tmp_path / "proc-cgroup").write_text(proc)
    for name, text in files.items():
        (tmp_path / "cg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cg" / name).write_text(text)


def test_a_v2_quota_of_one_and_a_half_cpus_gives_two(tmp_path, monkeypatch):
    _cgroups(tmp_path, monkeypatch, "0::/job\n", {"job/cpu.max": "150000 100000\n", "cpu.max": "max 100000\n"})
    assert devices._cgroup_cpu_quota() == 1.5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert devices.usable_cpus() == 2


def test_a_v1_quota_in_an_ancestor_counts(tmp_path, monkeypatch):
    _cgroups(tmp_path, monkeypatch, "3:cpu,cpuacct:/slurm/job1\n",
             {"cpu/slurm/job1/cpu.cfs_quota_us": "-1\n", "cpu/slurm/job1/cpu.cfs_period_us": "100000\n",
              "cpu/slurm/cpu.cfs_quota_us": "100000\n", "cpu/slurm/cpu.cfs_period_us": "100000\n"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    assert devices.usable_cpus() == 1


def test_affinity_bounds_without_a_quota(tmp_path, monkeypatch):
    _cgroups(tmp_path, monkeypatch, "0::/\n", {"cpu.max": "max 100000\n"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert devices._cgroup_cpu_quota() is None and devices.usable_cpus() == 1


def test_a_busy_machine_gets_fewer_threads(monkeypatch):
    for name in devices.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    import psutil

    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval, percpu: [97.0, 12.0, 100.0, 100.0])
    torch.set_num_threads(2)
    assert devices.busy_cpus() == 1  # one of this process's CPUs is taken (the others are not its own)
    assert devices.fit_threads() == 1
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval, percpu: [100.0, 100.0, 0.0, 0.0])
    torch.set_num_threads(2)
    assert devices.fit_threads() == 1  # overloaded: still one
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval, percpu: [3.0, 8.0, 100.0, 100.0])
    torch.set_num_threads(2)
    assert devices.fit_threads() == 2  # its own CPUs idle: both


def test_fit_threads_uses_the_room_unless_told(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "busy_cpus", lambda: 0)
    monkeypatch.setattr(devices, "usable_cpus", lambda: 1)
    for name in devices.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(2)
    assert devices.fit_threads() == 1
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own setting is left alone
    assert devices.fit_threads() == 2
    assert devices.fit_threads(3) == 3  # asked for explicitly: given
    with pytest.raises(ValueError, match="threads 0"):
        devices.fit_threads(0)


def test_threads_on_the_command_line(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from medsr.cli import main

    Image.fromarray((np.random.default_rng(0).random((12, 12)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png"), "--model", "lanczos-projected",
                 "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "c.png"), "--threads", "0"]) == 2
    assert "threads 0" in capsys.readouterr().err
