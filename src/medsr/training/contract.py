"""Training compact fidelity models for the values contract.

The degradation is the contract's own operator: LR = the ``scale x scale`` box mean of the
ground truth (a detector of ``scale`` times the pitch), optionally with Gaussian noise measured
from the modality. The network carries the data-consistency layer (``nets.compact``), so the L1
loss is taken on the projected output: the network learns only what the projection cannot give.
Validation compares the EMA network with ``lanczos-projected`` (Lanczos, then medsr's projection)
on held-out slices, in the metrics of ``medsr evaluate``.

One loop, top to bottom: build -> start or resume -> iterate (crop, degrade, step, EMA) ->
validate -> save. A checkpoint holds everything to continue exactly.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from medsr.core import metrics
from medsr.core.consistency import average_back, enforce
from medsr.core.resize import resize_lanczos
from medsr.formats.volume import read_volume, reading_axis
from medsr.nets.compact import COMPACT_PRESETS, CompactSR, compact
from medsr.training import checkpoint as ckpt

log = logging.getLogger(__name__)

VOLUME_PERCENTILES = (0.5, 99.5)  # the metrics' data range, as ``medsr evaluate``'s volume protocol


@dataclass(frozen=True, kw_only=True)
class ContractConfig:
    """A compact-model run. Volumes are given as ``PATH`` or ``PATH:FIRST-LAST`` (slices along the
    reading axis, inclusive), so one volume can give training and validation blocks."""

    train: tuple[str, ...]
    val: tuple[str, ...] = ()
    scale: int = 2
    preset: str = "compact-m"
    gt_size: int = 128
    # the loss leaves out this band of each crop (ground-truth pixels): there the network sees padding,
    # not image, and learning to undo the padding crowded out the detail (docs/BENCHMARKS.md)
    margin: int = 16
    batch_size: int = 16
    iterations: int = 20_000
    lr: float = 1e-3  # Adam; cosine decay to lr / 100
    ema_decay: float = 0.999
    noise: float = 0.0  # Gaussian noise on LR, standard deviation in [0, 1] units
    min_std: float = 0.01  # a crop flatter than this (air) is drawn again, up to 10 times
    val_every: int = 500
    save_every: int = 500
    seed: int = 0
    init: str | None = None  # weights to start from (a checkpoint or exported model)

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("train: give at least one volume")
        if self.preset not in COMPACT_PRESETS:
            raise ValueError(f"preset {self.preset!r}: one of {', '.join(COMPACT_PRESETS)}")
        if self.scale not in (2, 3, 4):
            raise ValueError(f"scale {self.scale}: 2, 3 or 4")
        if self.gt_size % self.scale or self.gt_size < 8 * self.scale:
            raise ValueError(f"gt_size {self.gt_size}: a multiple of scale {self.scale}, at least {8 * self.scale}")
        if not 0 <= self.margin < self.gt_size // 4:
            raise ValueError(f"margin {self.margin}: from 0 to below a quarter of gt_size {self.gt_size}")
        for name in ("batch_size", "iterations", "val_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}: must be at least 1")
        if not (0 < self.lr < 1 and 0 <= self.ema_decay < 1 and 0 <= self.noise < 1 and self.min_std >= 0):
            raise ValueError("lr within (0, 1), ema_decay and noise within [0, 1), min_std >= 0")


def parse_entry(entry: str) -> tuple[Path, tuple[int, int] | None]:
    """``PATH`` or ``PATH:FIRST-LAST`` -> (path, inclusive slice range or None)."""
    match = re.fullmatch(r"(.+):(\d+)-(\d+)", entry)
    if match:
        return Path(match[1]), (int(match[2]), int(match[3]))
    return Path(entry), None


def volume_slices(entry: str) -> np.ndarray:
    """The slices of one volume entry as float32 (N, H, W) in [0, 1] over the whole volume's
    min..max (the mapping ``medsr.upscale`` uses for a volume)."""
    path, block = parse_entry(entry)
    volume = read_volume(path)
    data = np.moveaxis(volume.values, reading_axis(volume.spacing), 0)
    if data.ndim == 4:
        data = np.moveaxis(data, 3, 1).reshape(-1, *data.shape[1:3])
    low, high = float(data.min()), float(data.max())
    data = ((data - low) / (high - low if high > low else 1.0)).astype(np.float32)
    if block is not None:
        first, last = block
        if not 0 <= first <= last < len(data):
            raise ValueError(f"{entry}: slices {first}-{last} outside the volume's 0-{len(data) - 1}")
        data = data[first:last + 1]
    return data


class SliceCrops:
    """Random ground-truth crops from the slices of several volumes (flips and quarter turns)."""

    def __init__(self, entries: tuple[str, ...], *, gt_size: int, min_std: float) -> None:
        self.slices = [s for entry in entries for s in volume_slices(entry) if min(s.shape) >= gt_size]
        if not self.slices:
            raise ValueError(f"no slice of {', '.join(entries)} is at least {gt_size} pixels on each side")
        self.gt_size, self.min_std = gt_size, min_std

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([self._crop(generator) for _ in range(size)])[:, None]

    def _crop(self, generator: torch.Generator) -> torch.Tensor:
        for _ in range(10):
            plane = self.slices[int(torch.randint(len(self.slices), (1,), generator=generator))]
            top = int(torch.randint(plane.shape[0] - self.gt_size + 1, (1,), generator=generator))
            left = int(torch.randint(plane.shape[1] - self.gt_size + 1, (1,), generator=generator))
            crop = torch.from_numpy(plane[top:top + self.gt_size, left:left + self.gt_size])
            if float(crop.std()) >= self.min_std:
                break
        turns, flip = (int(v) for v in torch.randint(4, (2,), generator=generator))
        crop = torch.rot90(crop, turns)
        return crop.flip(1) if flip % 2 else crop


def degrade(gt: torch.Tensor, scale: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    """The contract's operator: the block mean, plus Gaussian noise of ``noise`` (std, [0, 1] units)."""
    lq = F.avg_pool2d(gt, scale)
    if noise:
        lq = lq + noise * torch.randn(lq.shape, generator=generator)
    return lq


@dataclass
class ValSlice:
    gt: np.ndarray  # (1, H, W) in [0, 1], H and W whole blocks
    lq: np.ndarray
    data_range: float  # the volume's percentile span in [0, 1] units
    name: str
    baseline: float  # PSNR of lanczos-projected: the same at every validation, computed once


def validation_slices(entries: tuple[str, ...], scale: int, per_volume: int = 6) -> list[ValSlice]:
    found = []
    for entry in entries:
        data = volume_slices(entry)
        low, high = np.percentile(data, VOLUME_PERCENTILES)
        for index in np.linspace(0, len(data) - 1, min(per_volume, len(data))).round().astype(int):
            plane = data[index, : data.shape[1] // scale * scale, : data.shape[2] // scale * scale][None]
            lq = average_back(plane, (plane.shape[1] // scale, plane.shape[2] // scale)).astype(np.float32)
            span = float(high - low) or 1.0
            baseline = metrics.psnr(lanczos_projected(lq, scale)[0].astype(np.float64),
                                    plane[0].astype(np.float64), data_range=span)
            found.append(ValSlice(gt=plane, lq=lq, data_range=span, name=f"{entry}#{index}", baseline=baseline))
    return found


def lanczos_projected(lq: np.ndarray, scale: int) -> np.ndarray:
    """The baseline every model is judged against: Lanczos, then medsr's projection."""
    up = resize_lanczos(lq, lq.shape[1] * scale, lq.shape[2] * scale)
    return enforce(up, lq)


@torch.no_grad()
def validate(net: CompactSR, slices: list[ValSlice]) -> dict[str, float]:
    """Mean PSNR (dB) of the network's output after medsr's projection, and of ``lanczos-projected``."""
    net.eval()
    scores: dict[str, list[float]] = {"model": [], "lanczos-projected": []}
    for item in slices:
        out = enforce(net(torch.from_numpy(item.lq)[None])[0].clamp(0, 1).numpy(), item.lq)
        scores["model"].append(metrics.psnr(out[0].astype(np.float64), item.gt[0].astype(np.float64),
                                            data_range=item.data_range))
        scores["lanczos-projected"].append(item.baseline)
    net.train()
    return {name: float(np.mean(values)) for name, values in scores.items()}


@dataclass
class Run:
    """What the loop holds; ``state_dict`` is the checkpoint."""

    config: ContractConfig
    net_g: CompactSR
    net_g_ema: CompactSR
    optimizer: torch.optim.Adam
    generator: torch.Generator
    iteration: int = 0
    history: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return {"config": asdict(self.config), "net_g": self.net_g.state_dict(),
                "net_g_ema": self.net_g_ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "iteration": self.iteration, "rng": ckpt.rng_state({"crops": self.generator}),
                "history": self.history, "preset": self.config.preset, "scale": self.config.scale}


def build(config: ContractConfig) -> Run:
    torch.manual_seed(config.seed)
    net_g = compact(config.preset, channels=1, scale=config.scale)
    if config.init:
        from medsr.models.state_dicts import read_state_dict

        net_g.load_state_dict(read_state_dict(config.init), strict=True)
    optimizer = torch.optim.Adam(net_g.parameters(), lr=config.lr, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(config.seed)
    return Run(config=config, net_g=net_g, net_g_ema=copy.deepcopy(net_g).eval(), optimizer=optimizer,
               generator=generator)


def resume(run: Run, path: Path) -> None:
    state = ckpt.load(path)
    run.net_g.load_state_dict(state["net_g"])
    run.net_g_ema.load_state_dict(state["net_g_ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    ckpt.set_rng_state(state["rng"], {"crops": run.generator})
    run.iteration, run.history = state["iteration"], state["history"]


def learning_rate(config: ContractConfig, iteration: int) -> float:
    """Cosine from ``lr`` to ``lr / 100`` over the run."""
    progress = min(iteration / config.iterations, 1.0)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def step(run: Run, crops: SliceCrops) -> float:
    config = run.config
    gt = crops.batch(config.batch_size, run.generator)
    lq = degrade(gt, config.scale, config.noise, run.generator)
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(config, run.iteration)
    inner = slice(config.margin, config.gt_size - config.margin)
    out = run.net_g(lq)  # already projected: the loss sees what users get
    loss = F.l1_loss(out[..., inner, inner], gt[..., inner, inner])
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    with torch.no_grad():
        ema: list[torch.Tensor] = list(run.net_g_ema.parameters())
        live: list[torch.Tensor] = list(run.net_g.parameters())
        torch._foreach_lerp_(ema, live, 1 - config.ema_decay)
    run.iteration += 1
    return float(loss.detach())


def train(config: ContractConfig, run_dir: str | Path, *, resume_from: str | Path | None = None,
          until: int | None = None) -> Run:
    """Train (or continue) a run in ``run_dir``: ``last.pt`` every ``save_every`` iterations and at
    the end, ``best.pt`` at the best validation PSNR. ``until``: stop after that iteration (a budget),
    with the schedule of the whole run; resuming goes on exactly."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = build(config)
    if resume_from:
        resume(run, Path(resume_from))
        log.info("resumed at iteration %d from %s", run.iteration, resume_from)
    crops = SliceCrops(config.train, gt_size=config.gt_size, min_std=config.min_std)
    val = validation_slices(config.val, config.scale) if config.val else []
    log.info("%d training slices, %d validation slices; %s", len(crops.slices), len(val), config)
    started, losses = time.monotonic(), []
    last = config.iterations if until is None else min(until, config.iterations)
    while run.iteration < last:
        losses.append(step(run, crops))
        if val and (run.iteration % config.val_every == 0 or run.iteration == config.iterations):
            scores = validate(run.net_g_ema, val)
            record = {"iteration": run.iteration, "loss": float(np.mean(losses)), **scores,
                      "seconds": time.monotonic() - started}
            run.history.append(record)
            losses = []
            log.info("iteration %d: loss %.5f, val PSNR %.3f dB (lanczos-projected %.3f, gain %+.3f), %.0f s",
                     run.iteration, record["loss"], scores["model"], scores["lanczos-projected"],
                     scores["model"] - scores["lanczos-projected"], record["seconds"])
            if scores["model"] >= max(h["model"] for h in run.history):
                ckpt.save(run_dir / "best.pt", run.state_dict())
        if run.iteration % config.save_every == 0 or run.iteration == last:
            ckpt.save(run_dir / "last.pt", run.state_dict())
    return run
