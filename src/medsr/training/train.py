"""`medsr finetune`: the paper's transfer-learning recipe, one readable loop.

build -> init (pretrained G, official or warmed-up D) or resume -> iterate (degrade, pool, G step,
D step, EMA) -> log, validate, save. Runs on CPU or CUDA; under ``torchrun`` each process trains
on its share of every epoch (DDP) and rank 0 alone writes.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from medsr.core import files
from medsr.core.metrics import psnr, ssim
from medsr.engine.devices import join_process_group, native_bf16, rank_device
from medsr.formats.io import ImageError, read_image
from medsr.models import pretrained, state_dicts, weights
from medsr.nets.rrdbnet import RRDBNet, rrdbnet
from medsr.nets.unet import UNetDiscriminatorSN, unet_discriminator
from medsr.training import checkpoint
from medsr.training.config import TrainConfig, dump_yaml, from_dict, to_dict
from medsr.training.data import HRImages, as_rgb, checked_files
from medsr.training.degrade import PairPool, apply, sample
from medsr.training.losses import PerceptualLoss, gan_loss

GENERATORS = ("order", "crop", "degrade", "pool")
log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything the loop touches."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    rank: int
    world_size: int
    net_g: RRDBNet
    net_g_ema: RRDBNet
    net_d: UNetDiscriminatorSN | None  # None when loss.gan_weight is 0 (pixel-only fidelity recipe)
    optim_g: torch.optim.Optimizer
    optim_d: torch.optim.Optimizer | None
    sched_g: torch.optim.lr_scheduler.MultiStepLR
    sched_d: torch.optim.lr_scheduler.MultiStepLR | None
    perceptual: PerceptualLoss | None
    data: HRImages
    pool: PairPool
    generators: dict[str, torch.Generator]
    val_files: list[Path] = field(default_factory=list)
    iteration: int = 0
    warmup_done: bool = False
    ddp: dict[str, torch.nn.Module] = field(default_factory=dict)  # DDP wrappers under torchrun
    bf16: bool = False  # run.bf16 resolved for this device

    @property
    def ddp_g(self) -> torch.nn.Module:
        return self.ddp.get("g", self.net_g)

    @property
    def ddp_d(self) -> torch.nn.Module:
        """The discriminator (in its DDP wrapper under torchrun), for runs that have one."""
        net = self.ddp.get("d", self.net_d)
        assert net is not None, "this run has no discriminator (loss.gan_weight is 0)"
        return net


# ---------------------------------------------------------------------------------------------
# build


def build(config: TrainConfig, run_dir: Path) -> Run:
    rank, world_size = join_process_group()
    device = rank_device(config.run.device, world_size)
    seed = config.run.seed
    generators = {name: torch.Generator().manual_seed(seed * 10 + i + (0 if name == "order" else 1000 * rank))
                  for i, name in enumerate(GENERATORS)}
    torch.manual_seed(seed)  # the same fresh networks in every process: the EMA copy is not synchronised by DDP
    net_g = rrdbnet(config.model.preset).to(device)
    net_d = unet_discriminator(config.model.preset).to(device) if config.loss.gan_weight > 0 else None
    torch.manual_seed(seed + rank)
    perceptual = None
    if config.loss.perceptual_weight > 0:
        layers = tuple(config.loss.perceptual_layers)
        perceptual = PerceptualLoss(pretrained.load_vgg19(config.loss.vgg_weights, layers=layers),
                                    layer_weights=config.loss.perceptual_layers).to(device)
    if config.run.channels_last:
        net_g = net_g.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack Module.to(memory_format=)
        net_d = (net_d.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack Module.to(memory_format=)
                 if net_d is not None else None)
    optim_g, sched_g = _optimizer(net_g, config.optim.lr_g, config)
    optim_d, sched_d = _optimizer(net_d, config.optim.lr_d, config) if net_d is not None else (None, None)
    run = Run(
        config=config, run_dir=run_dir, device=device, rank=rank, world_size=world_size,
        net_g=net_g, net_g_ema=copy.deepcopy(net_g).eval().requires_grad_(False), net_d=net_d,
        optim_g=optim_g, optim_d=optim_d, sched_g=sched_g, sched_d=sched_d,
        perceptual=perceptual,
        data=HRImages(config.data.train, gt_size=config.data.gt_size, use_hflip=config.data.use_hflip,
                      rank=rank, world_size=world_size, skip_bad=config.data.skip_bad),
        val_files=[] if not config.data.val else checked_files(
            config.data.val, min_side=8 * config.degrade.scale, skip_bad=config.data.skip_bad, what="validation"
        )[: config.data.val_images],
        pool=PairPool(size=config.data.pool_size, batch_size=config.data.batch_size, generator=generators["pool"]),
        generators=generators,
        bf16=native_bf16(device) if config.run.bf16 is None else config.run.bf16,
    )
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        run.ddp = {"g": DistributedDataParallel(net_g, device_ids=ids)}
        if net_d is not None:
            run.ddp["d"] = DistributedDataParallel(net_d, device_ids=ids)
    return run


def _optimizer(net: torch.nn.Module, lr: float, config: TrainConfig):
    optim = torch.optim.Adam(net.parameters(), lr=lr, betas=config.optim.betas)
    return optim, torch.optim.lr_scheduler.MultiStepLR(optim, list(config.optim.milestones), config.optim.gamma)


def init_pretrained(run: Run) -> None:
    """Generator from the pretrained model; discriminator from a file, or fresh (warmed up later)."""
    model = run.config.model
    if model.init_g != "scratch":
        path, spec = weights.resolve(model.init_g)
        loaded = state_dicts.load_generator(path, preset=model.preset if spec is None else spec.preset)
        run.net_g.load_state_dict(loaded.state_dict())
        run.net_g_ema.load_state_dict(loaded.state_dict())
    if model.init_d != "scratch":
        loaded_d = pretrained.load_discriminator(model.init_d, preset=model.preset)
        assert run.net_d is not None  # TrainConfig refuses init_d when loss.gan_weight is 0
        run.net_d.load_state_dict(loaded_d.state_dict())
    run.warmup_done = run.net_d is None or model.init_d != "scratch" or model.d_warmup_iters == 0


# ---------------------------------------------------------------------------------------------
# checkpoints


def _from_every_rank(run: Run, state):
    """``[state of rank 0, state of rank 1, ...]``: every rank takes part."""
    if run.world_size == 1:
        return [state]
    gathered: list = [None] * run.world_size
    dist.all_gather_object(gathered, state)
    return gathered


RESUMABLE = ("net_g", "net_d", "optim_g", "optim_d", "sched_g", "sched_d", "pool", "data")
PER_RANK = ("pool", "data")  # each process has its own pairs and its own share of the images


def _state_of(part) -> dict | None:
    return None if part is None else part.state_dict()


def _networks_agree(run: Run) -> None:
    """DDP keeps every process's networks equal; one that drifted (a missed all-reduce, a
    non-deterministic kernel) would leave a checkpoint that is rank 0's alone. Checked at every save."""
    if run.world_size == 1:
        return
    mine = checkpoint.tensor_digest({"net_g": run.net_g.state_dict(), "net_g_ema": run.net_g_ema.state_dict(),
                                     "net_d": None if run.net_d is None else run.net_d.state_dict()})
    gathered: list = [None] * run.world_size
    dist.all_gather_object(gathered, mine)
    if len(set(gathered)) > 1:
        raise RuntimeError(f"iteration {run.iteration}: the {run.world_size} processes' networks differ "
                           f"(SHA-256 {', '.join(d[:12] for d in gathered)}); the run cannot go on")
    if run.rank == 0:
        log.info("iteration %d: the %d processes' networks agree (SHA-256 %s)", run.iteration, run.world_size,
                 mine[:12])


def save(run: Run) -> None:
    rng = _from_every_rank(run, checkpoint.rng_state(run.generators))
    per_rank = {name: _from_every_rank(run, _state_of(getattr(run, name))) for name in PER_RANK}
    _networks_agree(run)
    if run.rank != 0:
        return
    state = {
        "iteration": run.iteration, "warmup_done": run.warmup_done, "config": to_dict(run.config),
        "net_g_ema": run.net_g_ema.state_dict(), "rng": rng,
        **{name: _state_of(getattr(run, name)) for name in RESUMABLE if name not in PER_RANK}, **per_rank,
    }
    if not run.config.run.keep_optimizer:  # two Adam moments per weight: most of a checkpoint's size
        state["optim_g"] = state["optim_d"] = None
        state["resumable"] = False
    checkpoint.save(run.run_dir / "latest.pth", state)
    keep = run.config.run.keep_every
    if keep and run.iteration % keep == 0:
        checkpoint.save(run.run_dir / f"iter_{run.iteration}.pth", state)


def restore(run: Run, state: dict) -> None:
    if state.get("resumable") is False:
        raise ValueError("this checkpoint was written without optimiser state (run.keep_optimizer false); it "
                         "can be exported, not resumed")
    if len(state["rng"]) != run.world_size:
        raise ValueError(f"checkpoint was written by {len(state['rng'])} processes; resume with as many")
    run.net_g_ema.load_state_dict(state["net_g_ema"])
    for name in RESUMABLE:
        part, saved = getattr(run, name), state[name]
        if name in PER_RANK and isinstance(saved, list):  # one per process (older checkpoints: rank 0's)
            saved = saved[run.rank]
        if (part is None) != (saved is None):
            raise ValueError(f"checkpoint {'lacks' if saved is None else 'has'} {name} but the config "
                             f"{'has' if saved is None else 'lacks'} it (loss.gan_weight changed?)")
        if part is not None:
            part.load_state_dict(saved)
    run.iteration, run.warmup_done = state["iteration"], state["warmup_done"]
    checkpoint.set_rng_state(state["rng"][run.rank], run.generators)


def config_of(path: Path) -> TrainConfig:
    return from_dict(TrainConfig, checkpoint.load(path)["config"])


# ---------------------------------------------------------------------------------------------
# one iteration


def _autocast(run: Run):
    """bf16 autocast where the run uses it: the weights, the optimiser and the losses stay fp32."""
    return torch.autocast(run.device.type, dtype=torch.bfloat16) if run.bf16 else nullcontext()


def degraded_batch(run: Run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lq, gt_usm, gt) on the device, mixed through the pool."""
    config = run.config
    gt = run.data.batch(config.data.batch_size, run.generators["order"], run.generators["crop"]).to(run.device)
    params = sample(gt.shape[0], config.degrade, run.generators["degrade"])
    lq, gt_usm = apply(gt, params, config.degrade)
    lq, gt_usm, gt = run.pool.exchange(lq, gt_usm, gt)
    return lq, gt_usm, gt


def d_step(run: Run, gt: torch.Tensor, sr: torch.Tensor) -> dict[str, float]:
    assert run.net_d is not None and run.optim_d is not None  # D steps run only with a discriminator
    run.net_d.requires_grad_(True)
    run.optim_d.zero_grad(set_to_none=True)
    with _autocast(run):
        l_d_real = gan_loss(run.ddp_d(gt).float(), real=True)
    l_d_real.backward()
    with _autocast(run):
        l_d_fake = gan_loss(run.ddp_d(sr.detach()).float(), real=False)
    l_d_fake.backward()
    run.optim_d.step()
    return {"l_d_real": l_d_real.item(), "l_d_fake": l_d_fake.item()}


def train_step(run: Run) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """G step with D frozen, then D step on the unsharpened GT, then EMA: (losses, lq, sr)."""
    loss = run.config.loss
    lq, gt_usm, gt = degraded_batch(run)
    if run.net_d is not None:
        run.net_d.requires_grad_(False)
    run.optim_g.zero_grad(set_to_none=True)
    with _autocast(run):
        sr = run.ddp_g(lq)
        terms = {"l_pix": loss.pixel_weight * F.l1_loss(sr.float(), gt_usm)}
        if run.perceptual is not None:
            terms["l_percep"] = loss.perceptual_weight * run.perceptual(sr.float(), gt_usm)
        if run.net_d is not None:
            terms["l_gan"] = loss.gan_weight * gan_loss(run.net_d(sr).float(), real=True)
    cast(torch.Tensor, sum(terms.values())).backward()  # a tensor: l_pix is always there
    run.optim_g.step()
    logs: dict[str, float] = {k: v.item() for k, v in terms.items()}
    if run.net_d is not None:
        assert run.sched_d is not None  # made with the discriminator
        logs |= d_step(run, gt, sr)
        run.sched_d.step()
    decay = run.config.model.ema_decay
    with torch.no_grad():  # one multi-tensor launch on CUDA instead of ~700 small ones
        torch._foreach_lerp_(list(run.net_g_ema.parameters()), list(run.net_g.parameters()), 1 - decay)
    run.sched_g.step()
    return logs, lq, sr.detach()


def warm_up_discriminator(run: Run, log) -> None:
    """A fresh D is trained alone against the frozen pretrained G before fine-tuning starts
    (our substitute when the official RealESRGAN_x4plus_netD.pth is not given)."""
    total, start = run.config.model.d_warmup_iters, time.perf_counter()
    log(f"D warm-up: {total} discriminator steps against the frozen generator before fine-tuning")
    for i in range(1, total + 1):
        lq, _, gt = degraded_batch(run)
        with torch.no_grad(), _autocast(run):
            sr = run.net_g(lq)
        logs = d_step(run, gt, sr)
        if i % run.config.run.log_every == 0 or i == total:
            values = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
            rate = i / (time.perf_counter() - start)
            log(f"D warm-up {i}/{total}  {values}  {rate:.3f} it/s  ETA {(total - i) / rate / 60:.0f} min")
    run.warmup_done = True


# ---------------------------------------------------------------------------------------------
# validation and logging


def validate(run: Run) -> dict[str, float]:
    """PSNR/SSIM of the EMA generator on bicubic-downscaled validation images (8-bit range)."""
    scale = run.config.degrade.scale
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    for path in run.val_files:
        try:
            gt = as_rgb(read_image(path))
        except ImageError as exc:  # changed since the start: measure the others, lose nothing
            log.warning("validation: %s", exc)
            continue
        side = min(gt.shape[1], gt.shape[2], 2 * run.config.data.gt_size) // (8 * scale) * 8 * scale
        if side == 0:  # smaller than one 8-pixel LQ block: nothing to measure
            continue
        top, left = (gt.shape[1] - side) // 2, (gt.shape[2] - side) // 2
        gt = gt[:, top : top + side, left : left + side]
        lq = F.interpolate(gt[None], scale_factor=1 / scale, mode="bicubic", antialias=True).clamp(0, 1)
        with torch.no_grad():
            sr = run.net_g_ema(lq.to(run.device))[0].float().clamp(0, 1).cpu()
        sr8, gt8 = (sr * 255).round().numpy(), (gt * 255).round().numpy()
        scores["psnr"].append(psnr(sr8, gt8, data_range=255))
        scores["ssim"].append(ssim(sr8, gt8, data_range=255))
    return {f"val_{k}": sum(v) / len(v) for k, v in scores.items() if v}


class Logger:
    """Log lines (``logging``), a CSV of scalars, and TensorBoard when it is installed (rank 0 only)."""

    def __init__(self, run: Run) -> None:
        self.active = run.rank == 0
        self.csv = run.run_dir / "log.csv"
        self.writer = None
        if self.active:
            self._drop_rows_after(run.iteration)
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("TensorBoard is not installed: logging to log.csv only (pip install tensorboard)")
            else:
                self.writer = SummaryWriter(str(run.run_dir / "tensorboard"))

    def _drop_rows_after(self, iteration: int) -> None:
        """A resumed run repeats the iterations after its last save: forget their rows."""
        if not self.csv.exists():
            return
        header, *rows = self.csv.read_text().splitlines(keepends=True)
        kept = [row for row in rows if row.split(",", 1)[0].isdigit() and int(row.split(",", 1)[0]) <= iteration]
        if len(kept) != len(rows):
            files.write_atomic(self.csv, (header + "".join(kept)).encode())

    def line(self, text: str) -> None:
        if self.active:
            log.info(text)

    def scalars(self, iteration: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        new = not self.csv.exists()
        with open(self.csv, "a") as f:
            if new:
                f.write("iteration,name,value\n")
            f.writelines(f"{iteration},{k},{v:.6g}\n" for k, v in values.items())
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(k, v, iteration)

    def images(self, iteration: int, lq: torch.Tensor, sr: torch.Tensor) -> None:
        if self.writer:
            up = F.interpolate(lq[:4].float().cpu(), size=sr.shape[-2:], mode="nearest")
            self.writer.add_images("lq_vs_sr", torch.cat([up, sr[:4].float().cpu()], 3).clamp(0, 1), iteration)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


# ---------------------------------------------------------------------------------------------
# the loop


def finetune(config: TrainConfig, run_dir: str | Path, *, resume: bool = False) -> list[dict[str, float]]:
    """Fine-tune as ``config`` says, writing into ``run_dir``; returns the per-iteration losses.

    A new run refuses a folder that already holds a checkpoint; ``resume`` continues from
    ``run_dir/latest.pth`` so that N iterations, a stop and M more equal N + M uninterrupted.
    SIGINT or SIGTERM in a single-process run saves the iteration under way and raises
    KeyboardInterrupt (``StopRequests``).
    """
    run_dir = Path(run_dir)
    if not config.data.train:
        raise ValueError("data.train: give the folder of training images")
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 holds the folder for all ranks
        return _finetune(config, run_dir, resume)
    with files.folder_lock(run_dir):
        return _finetune(config, run_dir, resume)


def _finetune(config: TrainConfig, run_dir: Path, resume: bool) -> list[dict[str, float]]:
    latest = run_dir / "latest.pth"
    if not resume and latest.exists():
        raise ValueError(f"{run_dir}: holds a run already (latest.pth); resume it or give another folder")
    if resume and not latest.exists():
        raise ValueError(f"{latest}: no checkpoint to resume from")
    if resume:
        _check_resumable(config, config_of(latest), latest)
    run = build(config, run_dir)
    if resume:
        restore(run, checkpoint.load(latest))
    logger = Logger(run)
    chosen = "as run.bf16 says" if config.run.bf16 is not None else "where native"
    logger.line(f"device {run.device}: {'bf16 autocast' if run.bf16 else 'fp32'} ({chosen})")
    if resume:
        logger.line(f"resumed {run_dir} at iteration {run.iteration}")
        if run.iteration >= config.run.iterations:
            logger.line(f"{run_dir}: the run is finished ({run.iteration} of {config.run.iterations} iterations); "
                        "set run.iterations higher to train on")
            return []
    else:
        init_pretrained(run)
        if run.rank == 0:
            files.write_atomic(run_dir / "config.yaml", dump_yaml(config).encode())
    return _iterate(run, logger)


# What the checkpoint's tensors were made with: a resumed run cannot change them.
FIXED_ON_RESUME = ("model.preset", "data.gt_size", "data.batch_size", "data.pool_size", "degrade.scale")


def _check_resumable(config: TrainConfig, stored: TrainConfig, path: Path) -> None:
    """Refuse, before anything is built, a resume whose config changes what the stored tensors are."""
    changed = []
    for key in FIXED_ON_RESUME:
        section, name = key.split(".")
        now, then = getattr(getattr(config, section), name), getattr(getattr(stored, section), name)
        if now != then:
            changed.append(f"{key} {then} -> {now}")
    if (config.loss.gan_weight > 0) != (stored.loss.gan_weight > 0):
        changed.append("loss.gan_weight: with a discriminator <-> without")
    if changed:
        raise ValueError(f"{path}: a resumed run keeps what its checkpoint was made with; changed: "
                         f"{'; '.join(changed)} (start a new run for that)")


class StopRequests:
    """Ctrl-C (SIGINT) or SIGTERM (a scheduler's time limit) during the iterations of a
    single-process run in the main thread: noted, so that the loop ends the iteration under way and
    saves before it stops; a second signal acts at once. Elsewhere (the D warm-up, which saves
    nothing before its end; DDP, where the other ranks would wait for this one; threads), and for a
    signal the process ignores, signals keep their usual effect."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run: Run) -> None:
        self.run = run
        self.active = run.world_size == 1 and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def _note(self, signum: int, frame: object) -> None:
        self.requested = True
        self.__exit__()  # the next signal stops at once
        log.info("%s: ending iteration %d and saving it (another stops at once)", signal.Signals(signum).name,
                 self.run.iteration)

    def __enter__(self) -> StopRequests:
        if self.active:
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous not in (signal.SIG_IGN, None):  # None: set outside Python, left alone
                    self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _iterate(run: Run, logger: Logger) -> list[dict[str, float]]:
    if not run.warmup_done:
        warm_up_discriminator(run, logger.line)
        save(run)
    with StopRequests(run) as stop:
        return _iterate_until_stopped(run, logger, stop)


def _iterate_until_stopped(run: Run, logger: Logger, stop: StopRequests) -> list[dict[str, float]]:
    config = run.config
    history, start, total = [], time.perf_counter(), config.run.iterations
    first = saved = run.iteration
    while run.iteration < total:
        if stop.requested:
            if saved != run.iteration:
                save(run)
            logger.line(f"stopped at iteration {run.iteration} and saved it: resume the run to go on")
            logger.close()
            raise KeyboardInterrupt
        run.iteration += 1
        try:
            logs, lq, sr = train_step(run)
        except ImageError as exc:  # a file changed or broke during the run: keep what is done
            run.iteration -= 1
            if run.world_size > 1:  # the other ranks would wait for this one in the save: all stop
                raise
            save(run)
            raise ImageError(f"{exc}; stopped with iteration {run.iteration} saved: fix or remove the file "
                             "and resume") from None
        history.append(logs)
        _report(run, logger, logs, first, start)
        if run.iteration % config.run.image_every == 0:
            logger.images(run.iteration, lq, sr)
        if run.iteration % config.run.save_every == 0 or run.iteration == total:
            save(run)
            saved = run.iteration
    logger.close()
    return history


def _report(run: Run, log: Logger, logs: dict[str, float], first: int, start: float) -> None:
    config, it = run.config.run, run.iteration
    if it % config.log_every == 0 or it == config.iterations:
        rate = (it - first) / (time.perf_counter() - start)
        eta = (config.iterations - it) / rate if rate > 0 else math.inf
        log.line(f"iter {it}/{config.iterations}  " + "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
                 + f"  lr {run.sched_g.get_last_lr()[0]:.1e}  {rate:.3f} it/s  ETA {eta / 60:.0f} min")
        log.scalars(it, logs)
    if run.val_files and it % config.val_every == 0 and run.rank == 0:
        scores = validate(run)
        log.line(f"iter {it} validation  " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        log.scalars(it, scores)


def export(checkpoint_path: str | Path, output: str | Path, *, overwrite: bool = False) -> Path:
    """Write the EMA generator of a checkpoint as fp16 safetensors, for ``medsr upscale --model``."""
    from safetensors.torch import save_file

    output = Path(output)
    if output.exists() and not overwrite:
        raise ValueError(f"{output}: already exists (kept; the overwrite option replaces it)")
    state = checkpoint.load(checkpoint_path)
    if "net_g_ema" not in state:
        raise ValueError(f"{checkpoint_path}: not a medsr training checkpoint (no net_g_ema)")
    fp16_max = torch.finfo(torch.float16).max
    for name, tensor in state["net_g_ema"].items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{checkpoint_path}: tensor {name!r} holds NaN or infinite values; not exported")
        if tensor.abs().max() > fp16_max:
            raise ValueError(f"{checkpoint_path}: tensor {name!r} has values beyond fp16's {fp16_max:g}; not exported")
    tensors = {k: v.half().contiguous() for k, v in state["net_g_ema"].items()}
    # One key: safetensors writes several in an order that changes from process to process, and an
    # export should be the same bytes every time (its digest can then be checked by exporting again).
    metadata = {"iteration": str(state["iteration"])}
    files.write_atomic(output, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    os.chmod(output, 0o644)  # an ordinary readable file, whatever the writer's temporary mode
    return output
