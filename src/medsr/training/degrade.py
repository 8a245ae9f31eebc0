"""Real-ESRGAN's second-order degradation: sample a record of parameters, then apply it.

``sample(batch, config, generator)`` draws every random choice into a small typed record
(``DegradeParams``) from an explicit ``torch.Generator``; ``apply(gt, params, config)`` is
deterministic given that record (noise comes from a seed inside it). Both stages are the same
function (``_stage``) called with two ``StageConfig``s whose defaults are the official values
(docs/SOURCES.md section 2). Per-sample parameters (kernels, noise levels, gray noise, JPEG quality)
apply to the whole batch at once on the batch's device; per-batch choices (resize, noise kind,
final order) are shared by the batch, as upstream, and ``PairPool`` mixes batches.

The pipeline, on ground truth ``gt`` (B, C, H, W) in [0, 1], any bit depth, C = 1 or 3:
    gt_usm = unsharp mask of gt                       (the target of L1 and perceptual losses)
    stage 1 on gt_usm: blur, resize (up/down/keep), Gaussian or Poisson noise; JPEG
    stage 2: blur (p 0.8), resize relative to the LQ size, noise
    final, in random order: (resize to H/scale + sinc filter, then JPEG) or (JPEG, then resize + sinc)
    lq = rounded to 8-bit levels

JPEG uses a real codec (Pillow/libjpeg) per image, not a tensor approximation; see
docs/DEGRADATION.md for the measurements behind that choice.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image as PILImage
from torch.nn import functional as F

from medsr.core.kernels import FAMILIES, KernelParams, filter2d, gaussian_blur, make_kernel

RESIZE_CHOICES = ("up", "down", "keep")


def _check_probs(name: str, probs: tuple[float, ...]) -> None:
    if any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
        raise ValueError(f"{name}: probabilities {probs} must be non-negative and sum to 1")


def _check_range(name: str, bounds: tuple[float, float], low: float = 0.0) -> None:
    if not low <= bounds[0] <= bounds[1]:
        raise ValueError(f"{name}: range {bounds} must be ordered and at least {low}")


def _check_prob(name: str, p: float) -> None:
    if not 0 <= p <= 1:
        raise ValueError(f"{name}: probability {p} outside [0, 1]")


@dataclass(frozen=True, kw_only=True)
class BlurConfig:
    family_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # in FAMILIES order
    sizes: tuple[int, int] = (7, 21)  # odd kernel sizes drawn from this range
    sigma: tuple[float, float] = (0.2, 3.0)
    betag: tuple[float, float] = (0.5, 4.0)  # generalized Gaussian shape
    betap: tuple[float, float] = (1.0, 2.0)  # plateau shape
    sinc_prob: float = 0.1

    def __post_init__(self) -> None:
        if len(self.family_probs) != len(FAMILIES):
            raise ValueError(f"family_probs: need {len(FAMILIES)} values, one per family {FAMILIES}")
        _check_probs("family_probs", self.family_probs)
        if self.sizes[0] % 2 == 0 or self.sizes[1] % 2 == 0 or not 3 <= self.sizes[0] <= self.sizes[1]:
            raise ValueError(f"sizes: {self.sizes} must be odd, ordered and at least 3")
        for name in ("sigma", "betag", "betap"):
            _check_range(name, getattr(self, name), low=1e-3)
        _check_prob("sinc_prob", self.sinc_prob)


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    blur: BlurConfig = field(default_factory=BlurConfig)
    blur_prob: float = 1.0
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)  # down draws from [low, 1], up from [1, high]
    gaussian_noise_prob: float = 0.5  # otherwise Poisson
    noise_sigma: tuple[float, float] = (1.0, 30.0)  # Gaussian sigma in 8-bit grey levels
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        _check_probs("resize_probs", self.resize_probs)
        for name in ("blur_prob", "gaussian_noise_prob", "gray_noise_prob"):
            _check_prob(name, getattr(self, name))
        _check_range("resize_range", self.resize_range, low=1e-3)
        if not self.resize_range[0] <= 1 <= self.resize_range[1]:
            raise ValueError(f"resize_range: {self.resize_range} must contain 1")
        _check_range("noise_sigma", self.noise_sigma)
        _check_range("poisson_scale", self.poisson_scale)
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality: {self.jpeg_quality} must be ordered within 1..100")


def second_stage() -> StageConfig:
    """The official second-stage values."""
    return StageConfig(
        blur=BlurConfig(sigma=(0.2, 1.5)),
        blur_prob=0.8,
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_sigma=(1.0, 25.0),
        poisson_scale=(0.05, 2.5),
    )


@dataclass(frozen=True, kw_only=True)
class SharpenConfig:
    """Unsharp mask of the ground truth: Gaussian 51x51, sigma 8, weight 0.5, soft threshold."""

    kernel_size: int = 51
    sigma: float = 8.0
    weight: float = 0.5
    threshold: float = 10 / 255  # in [0, 1] units, whatever the bit depth

    def __post_init__(self) -> None:
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: {self.kernel_size} must be odd and at least 3")
        if not (self.sigma > 0 and 0 <= self.weight <= 10 and 0 <= self.threshold <= 1):
            raise ValueError(f"sigma {self.sigma} must be positive, weight {self.weight} within 0..10, "
                             f"threshold {self.threshold} within 0..1")


@dataclass(frozen=True, kw_only=True)
class DegradeConfig:
    scale: int = 4
    first: StageConfig = field(default_factory=StageConfig)
    second: StageConfig = field(default_factory=second_stage)
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, int] = (7, 21)
    final_cutoff: tuple[float, float] = (math.pi / 3, math.pi)
    resize_then_jpeg_prob: float = 0.5
    resize_modes: tuple[str, ...] = ("area", "bilinear", "bicubic")
    kernel_pad: int = 21  # every kernel is zero-padded to this size
    sharpen: SharpenConfig = field(default_factory=SharpenConfig)

    def __post_init__(self) -> None:
        if self.scale not in (1, 2, 4):
            raise ValueError(f"scale: {self.scale} must be 1, 2 or 4")
        _check_prob("final_sinc_prob", self.final_sinc_prob)
        _check_prob("resize_then_jpeg_prob", self.resize_then_jpeg_prob)
        unknown = set(self.resize_modes) - {"area", "bilinear", "bicubic", "nearest"}
        if unknown or not self.resize_modes:
            raise ValueError(f"resize_modes: unknown {sorted(unknown)}; choose area, bilinear, bicubic")
        largest = max(self.first.blur.sizes[1], self.second.blur.sizes[1], self.final_sinc_sizes[1])
        if self.kernel_pad < largest or self.kernel_pad % 2 == 0:
            raise ValueError(f"kernel_pad: {self.kernel_pad} must be odd and at least {largest}")


# ---------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True, kw_only=True)
class StageParams:
    kernels: tuple[KernelParams, ...]  # per sample
    blur: bool
    resize: str  # "up", "down" or "keep"
    resize_scale: float
    resize_mode: str
    noise: str  # "gaussian" or "poisson"
    noise_levels: tuple[float, ...]  # per sample: sigma in grey levels, or Poisson scale
    gray_noise: tuple[bool, ...]  # per sample
    jpeg_quality: tuple[int, ...]  # per sample


@dataclass(frozen=True, kw_only=True)
class DegradeParams:
    first: StageParams
    second: StageParams
    final_kernels: tuple[KernelParams, ...]  # per sample: sinc or pulse
    final_mode: str
    resize_then_jpeg: bool
    noise_seed: int

    @property
    def batch_size(self) -> int:
        return len(self.final_kernels)

    def describe(self, index: int) -> list[str]:
        """Three short lines of what happened to sample ``index``, for preview sheets."""
        lines = []
        for name, stage in (("1", self.first), ("2", self.second)):
            blur = stage.kernels[index].describe() if stage.blur else "no blur"
            resize = stage.resize
            if stage.resize != "keep":
                resize += f" {stage.resize_scale:.2f} {stage.resize_mode}"
            unit = "s" if stage.noise == "gaussian" else "p"
            gray = " gray" if stage.gray_noise[index] else ""
            lines.append(f"{name}: {blur}; {resize}; {stage.noise[:5]} {unit}={stage.noise_levels[index]:.2f}{gray}")
        order = "resize+sinc, jpeg" if self.resize_then_jpeg else "jpeg, resize+sinc"
        lines.append(f"q{self.first.jpeg_quality[index]}; final {order} q{self.second.jpeg_quality[index]} "
                     f"{self.final_mode} {self.final_kernels[index].describe()}")
        return lines


# ---------------------------------------------------------------------------------------------
# Sampling


class _Draw:
    """Random draws from one explicit generator (CPU), as Python numbers."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator, dtype=torch.float64).item()

    def chance(self, p: float) -> bool:
        return torch.rand((), generator=self.generator, dtype=torch.float64).item() < p

    def index(self, probs: tuple[float, ...]) -> int:
        return int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=self.generator))

    def integer(self, low: int, high: int) -> int:
        """Uniform in [low, high], both included."""
        return int(torch.randint(low, high + 1, (), generator=self.generator))

    def odd(self, sizes: tuple[int, int]) -> int:
        return 2 * self.integer(sizes[0] // 2, sizes[1] // 2) + 1

    def beta(self, bounds: tuple[float, float]) -> float:
        # Half the draws below 1, half above, as upstream (a range starting at 1 gives 1 in that half).
        return self.uniform(bounds[0], 1) if self.chance(0.5) else self.uniform(1, bounds[1])


def sample_kernel(config: BlurConfig, draw: _Draw) -> KernelParams:
    size = draw.odd(config.sizes)
    if draw.chance(config.sinc_prob):
        low = math.pi / 3 if size < 13 else math.pi / 5  # small kernels cannot hold low cutoffs
        return KernelParams(family="sinc", size=size, cutoff=draw.uniform(low, math.pi))
    family = FAMILIES[draw.index(config.family_probs)]
    sigma_x = draw.uniform(*config.sigma)
    sigma_y, theta = sigma_x, 0.0
    if "aniso" in family:
        sigma_y, theta = draw.uniform(*config.sigma), draw.uniform(-math.pi, math.pi)
    beta = 1.0
    if family.startswith("generalized"):
        beta = draw.beta(config.betag)
    elif family.startswith("plateau"):
        beta = draw.beta(config.betap)
    return KernelParams(family=family, size=size, sigma_x=sigma_x, sigma_y=sigma_y, theta=theta, beta=beta)


def _sample_stage(config: StageConfig, batch: int, modes: tuple[str, ...], draw: _Draw) -> StageParams:
    resize = RESIZE_CHOICES[draw.index(config.resize_probs)]
    scale = {"up": lambda: draw.uniform(1, config.resize_range[1]),
             "down": lambda: draw.uniform(config.resize_range[0], 1),
             "keep": lambda: 1.0}[resize]()
    noise = "gaussian" if draw.chance(config.gaussian_noise_prob) else "poisson"
    level_range = config.noise_sigma if noise == "gaussian" else config.poisson_scale
    return StageParams(
        kernels=tuple(sample_kernel(config.blur, draw) for _ in range(batch)),
        blur=draw.chance(config.blur_prob),
        resize=resize,
        resize_scale=scale,
        resize_mode=modes[draw.integer(0, len(modes) - 1)],
        noise=noise,
        noise_levels=tuple(draw.uniform(*level_range) for _ in range(batch)),
        gray_noise=tuple(draw.chance(config.gray_noise_prob) for _ in range(batch)),
        jpeg_quality=tuple(draw.integer(*config.jpeg_quality) for _ in range(batch)),
    )


def sample(batch: int, config: DegradeConfig, generator: torch.Generator) -> DegradeParams:
    """Draw the parameters of one degraded batch; only ``generator`` is consumed."""
    draw = _Draw(generator)
    first = _sample_stage(config.first, batch, config.resize_modes, draw)
    second = _sample_stage(config.second, batch, config.resize_modes, draw)
    finals = []
    for _ in range(batch):
        if draw.chance(config.final_sinc_prob):
            size = draw.odd(config.final_sinc_sizes)
            finals.append(KernelParams(family="sinc", size=size, cutoff=draw.uniform(*config.final_cutoff)))
        else:
            finals.append(KernelParams(family="pulse", size=config.kernel_pad))
    return DegradeParams(
        first=first,
        second=second,
        final_kernels=tuple(finals),
        final_mode=config.resize_modes[draw.integer(0, len(config.resize_modes) - 1)],
        resize_then_jpeg=draw.chance(config.resize_then_jpeg_prob),
        noise_seed=draw.integer(0, 2**62),
    )


# ---------------------------------------------------------------------------------------------
# Applying


def sharpen(gt: torch.Tensor, config: SharpenConfig) -> torch.Tensor:
    """Unsharp mask with a soft threshold, as Real-ESRGAN sharpens its training targets."""
    residual = gt - gaussian_blur(gt, config.kernel_size, config.sigma)
    mask = (residual.abs() > config.threshold).to(gt.dtype)
    soft_mask = gaussian_blur(mask, config.kernel_size, config.sigma)
    sharp = (gt + config.weight * residual).clamp(0, 1)
    return soft_mask * sharp + (1 - soft_mask) * gt


def _kernels(params: tuple[KernelParams, ...], pad_to: int) -> torch.Tensor:
    return torch.stack([make_kernel(p, pad_to=pad_to) for p in params])


def _resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(images, size=size, mode=mode, align_corners=False)
    return F.interpolate(images, size=size, mode=mode)


def _per_sample(values: tuple, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1)


def _luminance(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


def _poisson(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Poisson noise with as many levels per image as it has distinct 8-bit values (rounded up to 2**n)."""
    levels8 = (images * 255).round().clamp(0, 255) / 255
    distinct = [len(torch.unique(image)) for image in levels8]
    vals = _per_sample(tuple(2 ** math.ceil(math.log2(max(n, 1))) for n in distinct), images)
    return torch.poisson(levels8 * vals, generator=generator) / vals - levels8


def add_noise(images: torch.Tensor, stage: StageParams, generator: torch.Generator) -> torch.Tensor:
    levels, gray = _per_sample(stage.noise_levels, images), _per_sample(stage.gray_noise, images)
    batch, channels, height, width = images.shape
    if stage.noise == "gaussian":
        color = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        mono = torch.randn((batch, 1, height, width), generator=generator, device=images.device, dtype=images.dtype)
        noise = (color * (1 - gray) + mono * gray) * levels / 255
    else:
        noise = _poisson(images, generator) * (1 - gray) + _poisson(_luminance(images), generator) * gray
        noise = noise * levels
    return (images + noise).clamp(0, 1)


def jpeg(images: torch.Tensor, qualities: tuple[int, ...]) -> torch.Tensor:
    """Compress and decompress each image with libjpeg (through Pillow) at its own quality."""
    quantized = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for array, quality in zip(quantized, qualities, strict=True):
        buffer = io.BytesIO()
        PILImage.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, "JPEG", quality=quality)
        with PILImage.open(buffer) as im:
            decoded.append(np.asarray(im).reshape(array.shape))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return out.to(images.device, images.dtype) / 255


def _stage(images: torch.Tensor, stage: StageParams, size: tuple[int, int], pad: int,
           generator: torch.Generator) -> torch.Tensor:
    if stage.blur:
        images = filter2d(images, _kernels(stage.kernels, pad))
    images = _resize(images, size, stage.resize_mode)
    return add_noise(images, stage, generator)


def apply(gt: torch.Tensor, params: DegradeParams, config: DegradeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrade a batch of ground truth as the record says.

    Args:
        gt: (B, C, H, W) float in [0, 1], C = 1 or 3, any device; B = params.batch_size.

    Returns:
        (lq, gt_usm): lq of shape (B, C, H // scale, W // scale), rounded to 8-bit levels;
        gt_usm, the sharpened ground truth, at full precision.
    """
    if gt.dim() != 4 or gt.shape[0] != params.batch_size or gt.shape[1] not in (1, 3):
        raise ValueError(f"gt of shape {tuple(gt.shape)}: need ({params.batch_size}, 1 or 3, H, W)")
    height, width = gt.shape[-2:]
    generator = torch.Generator(device=gt.device).manual_seed(params.noise_seed)
    gt_usm = sharpen(gt, config.sharpen)
    first, second = params.first, params.second
    size1 = (int(height * first.resize_scale), int(width * first.resize_scale))
    out = jpeg(_stage(gt_usm, first, size1, config.kernel_pad, generator), first.jpeg_quality)
    # Upstream sizes the second resize relative to the LQ size, not to the current size.
    size2 = (int(height / config.scale * second.resize_scale), int(width / config.scale * second.resize_scale))
    out = _stage(out, second, size2, config.kernel_pad, generator)
    lq_size = (height // config.scale, width // config.scale)
    finals = _kernels(params.final_kernels, config.kernel_pad)
    if params.resize_then_jpeg:
        out = jpeg(filter2d(_resize(out, lq_size, params.final_mode), finals), second.jpeg_quality)
    else:
        out = filter2d(_resize(jpeg(out, second.jpeg_quality), lq_size, params.final_mode), finals)
    lq = (out * 255).round().clamp(0, 255) / 255
    return lq, gt_usm


def degrade(gt: torch.Tensor, config: DegradeConfig, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor, DegradeParams]:
    """Sample and apply in one call: (lq, gt_usm, params)."""
    params = sample(gt.shape[0], config, generator)
    lq, gt_usm = apply(gt, params, config)
    return lq, gt_usm, params


# ---------------------------------------------------------------------------------------------
# The pool of degraded pairs


class PairPool:
    """A shuffled pool of degraded pairs, so one batch mixes several batches' degradation choices.

    While the pool fills, each batch is stored and returned unchanged; once full, each new batch
    is swapped for a random batch from the pool (Real-ESRGAN's queue, default 180 pairs).
    """

    def __init__(self, *, size: int = 180, batch_size: int, generator: torch.Generator) -> None:
        if batch_size <= 0 or size % batch_size:
            raise ValueError(f"pool size {size} must be a multiple of the batch size {batch_size} "
                             f"(for example {size - size % batch_size or batch_size})")
        self.size, self.batch_size, self.generator = size, batch_size, generator
        self.filled = 0
        self.slots: list[torch.Tensor] = []

    def exchange(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Put a batch of aligned tensors (e.g. lq, gt_usm, gt) in; get a batch out."""
        if any(t.shape[0] != self.batch_size for t in tensors):
            raise ValueError(f"every tensor needs the pool's batch size {self.batch_size}")
        if not self.slots:
            self.slots = [t.new_zeros((self.size, *t.shape[1:])) for t in tensors]
        if self.filled < self.size:
            for slot, t in zip(self.slots, tensors, strict=True):
                slot[self.filled : self.filled + self.batch_size] = t
            self.filled += self.batch_size
            return tensors
        order = torch.randperm(self.size, generator=self.generator).to(self.slots[0].device)
        out = []
        for i, t in enumerate(tensors):
            self.slots[i] = self.slots[i][order]
            out.append(self.slots[i][: self.batch_size].clone())
            self.slots[i][: self.batch_size] = t
        return tuple(out)

    def state_dict(self) -> dict:
        return {"filled": self.filled, "slots": [s.cpu() for s in self.slots]}

    def load_state_dict(self, state: dict) -> None:
        self.filled, self.slots = state["filled"], list(state["slots"])
