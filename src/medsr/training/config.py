"""Fine-tuning configuration: nested dataclasses, presets, YAML and ``--set a.b=value`` overrides.

Unknown keys and values of the wrong type are errors that name the key. The resolved config is
stored in the run folder (``config.yaml``) and in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medsr.nets.vgg import LAYER_INDEX
from medsr.training.degrade import DegradeConfig
from medsr.training.presets import PRESETS

MAX_CONFIG_BYTES = 1_000_000  # a config is a few kilobytes; anything near this is not one


def check_bounds(config: object, **bounds: tuple[float | None, float | None]) -> None:
    """Each named field must be a finite number within its (low, high) bounds, inclusive; None
    leaves a side open. The error names the field (``from_dict`` adds the section)."""
    for name, (low, high) in bounds.items():
        value = getattr(config, name)
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond any float
            finite = False
        if not finite or (low is not None and value < low) or (high is not None and value > high):
            allowed = f"at least {low:g}" if high is None else f"within {low:g}..{high:g}"
            shown = repr(value) if len(repr(value)) <= 24 else f"{repr(value)[:12]}...({len(repr(value))} digits)"
            raise ValueError(f"{name} {shown}: must be {allowed}")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    train: str = ""  # folder of high-resolution training images (required)
    val: str | None = None  # folder of high-resolution validation images
    val_images: int = 8  # validate on at most this many (sorted) images
    gt_size: int = 256  # ground-truth crop side; LQ is gt_size / scale
    batch_size: int = 10
    pool_size: int = 180  # degraded pairs mixed across batches; batch_size must divide it
    use_hflip: bool = True
    skip_bad: bool = False  # leave out unreadable or too small images (listed) instead of refusing to start

    def __post_init__(self) -> None:
        check_bounds(self, val_images=(1, None), gt_size=(8, 4096), batch_size=(1, 4096), pool_size=(1, 1_000_000))


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    preset: str = "x4plus"  # RRDBNet and discriminator presets: x4plus or tiny (tests)
    init_g: str = "realesrgan-x4plus"  # known model, checkpoint path, or "scratch"
    init_d: str = "scratch"  # RealESRGAN_x4plus_netD.pth (or any netD checkpoint), or "scratch"
    d_warmup_iters: int = 100  # D-only steps against the frozen G when init_d is "scratch"
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        check_bounds(self, d_warmup_iters=(0, None), ema_decay=(0, 0.999999))


def _default_layer_weights() -> dict[str, float]:
    return {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    pixel_weight: float = 1.0  # L1 against the sharpened GT
    perceptual_weight: float = 1.0  # VGG19 L1 against the sharpened GT; 0 turns it off (no VGG needed)
    perceptual_layers: dict[str, float] = field(default_factory=_default_layer_weights)
    gan_weight: float = 0.1  # vanilla GAN loss for G; D sees the unsharpened GT
    vgg_weights: str | None = None  # vgg19-dcbb9e9d.pth; None: torch hub cache, medsr cache, download

    def __post_init__(self) -> None:
        check_bounds(self, pixel_weight=(0, 1e6), perceptual_weight=(0, 1e6), gan_weight=(0, 1e6))
        for layer, weight in self.perceptual_layers.items():
            if layer not in LAYER_INDEX or not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"perceptual_layers: {layer!r}: {weight!r} (layers: {', '.join(LAYER_INDEX)}; "
                                 "weights >= 0)")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    milestones: tuple[int, ...] = (400_000,)  # MultiStepLR, as upstream's fine-tuning config
    gamma: float = 0.5

    def __post_init__(self) -> None:
        check_bounds(self, lr_g=(1e-12, 1.0), lr_d=(1e-12, 1.0), gamma=(1e-6, 1.0))
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas {self.betas}: each must be within [0, 1)")
        if any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones {self.milestones}: iterations must be at least 1")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    iterations: int = 3000
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N (torchrun sets the local GPU)
    # bf16 autocast (weights, optimiser and losses in fp32): True, False, or None = where the device
    # has native bf16 (CUDA with bf16, a CPU with AVX512-BF16 or AMX); the log says which ran
    bf16: bool | None = None
    channels_last: bool = False
    log_every: int = 10
    save_every: int = 500
    val_every: int = 500
    image_every: int = 500  # sample images to TensorBoard
    keep_every: int = 0  # also keep iter_N.pth every N iterations (0: only latest.pth)
    keep_optimizer: bool = True  # False: lighter checkpoints (no optimiser state) that cannot be resumed

    def __post_init__(self) -> None:
        check_bounds(self, iterations=(0, 100_000_000), seed=(0, 2**31 - 1), log_every=(1, None),
                     save_every=(1, None), val_every=(1, None), image_every=(1, None), keep_every=(0, None))
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device {self.device!r}: use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)

    def __post_init__(self) -> None:
        if self.data.pool_size % self.data.batch_size:
            raise ValueError(f"data.pool_size {self.data.pool_size} must be a multiple of data.batch_size "
                             f"{self.data.batch_size}")
        if self.data.gt_size % (8 * self.degrade.scale):
            raise ValueError(f"data.gt_size {self.data.gt_size} must be a multiple of {8 * self.degrade.scale}")
        if self.model.preset not in ("x4plus", "tiny"):
            raise ValueError(f"model.preset {self.model.preset!r}: choose x4plus or tiny")
        if self.data.pool_size < self.data.batch_size:
            raise ValueError(f"data.pool_size {self.data.pool_size} must be at least data.batch_size "
                             f"{self.data.batch_size}")
        if self.loss.gan_weight == 0 and self.model.init_d != "scratch":
            raise ValueError(f"model.init_d {self.model.init_d!r} is given but loss.gan_weight is 0 "
                             "(a pixel-only run has no discriminator)")




# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def from_dict(cls: type, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from nested dicts, checking keys and value types."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ValueError(f"unknown config key {path!r} (known here: {', '.join(sorted(names))})")
        values[key] = _convert(hints[key], value, path)
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: {exc}") from None


def _convert(hint, value, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value, f"{path}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {path!r}: expected a list, got {value!r}")
        inner = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(inner, v, path) for v in value)
        if len(value) != len(args):
            raise ValueError(f"config key {path!r}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, path) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {path!r}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ValueError(f"config key {path!r}: expected {hint.__name__}, got {value!r}")
    return value


def to_dict(config) -> dict:
    """Plain nested dicts and lists (YAML- and checkpoint-safe)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(dataclasses.asdict(config))


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(tree: dict, assignment: str) -> dict:
    """``a.b=value`` (value parsed as YAML) into a nested dict; the key must exist."""
    if "=" not in assignment:
        raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. run.iterations=500")
    key, text = assignment.split("=", 1)
    parts, node = key.strip().split("."), tree
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"unknown config key {'.'.join(parts[: depth + 1])!r} in --set {assignment!r}")
        if depth == len(parts) - 1:
            node[part] = parse_yaml(text, f"--set {key.strip()}")
        else:
            node = node[part]
    return tree


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases: a few hundred bytes of nested aliases can expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in medsr configs")
        return super().compose_node(parent, index)


def parse_yaml(text: str, where: str):
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply to be a config") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise ValueError(f"{where}: {exc}") from None


def read_yaml_file(path: str | Path) -> dict:
    """A config file: a YAML mapping of at most MAX_CONFIG_BYTES, without aliases."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ValueError(f"config file {path}: not a file")
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"config file {path}: {size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {path}: not UTF-8 text") from None
    loaded = parse_yaml(text, f"config file {path}") or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path}: expected a mapping at the top level")
    return loaded


def build_config(*, preset: str | None = None, yaml_file: str | Path | None = None,
                 overrides: tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then a preset, then a YAML file, then ``--set`` overrides."""
    tree = to_dict(TrainConfig())
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        tree = _merge(tree, PRESETS[preset])
    if yaml_file:
        loaded = read_yaml_file(yaml_file)
        from_dict(TrainConfig, _merge(tree, loaded))  # unknown keys in the file are named here
        tree = _merge(tree, loaded)
    for assignment in overrides:
        tree = apply_override(tree, assignment)
    return from_dict(TrainConfig, tree)


def dump_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
