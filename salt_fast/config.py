"""Typed training configuration: paper defaults, YAML files and dotted command-line overrides.

``load_config(path, overrides)`` starts from the defaults below (the paper's Table 5),
applies a YAML file (a nested mapping matching the dataclasses) and then overrides such as
``optim.steps=100``, ``model.encoder_overrides.depth=2`` or ``data.train_lists=[a.txt,b.txt]``
(values are parsed as YAML). Unknown keys, wrong types, bad choices and out-of-range values
raise :class:`ConfigError` naming the full dotted key. ``save_config`` writes the resolved
config so that ``load_config(saved)`` reproduces it exactly; ``describe_config`` renders the
table of keys, defaults and meanings. A key with a closed set of values reads that set from the
module that owns it (``salt_fast.stages.STAGES``, ``salt_fast.masking.MASK_SETS`` ...), so a new
stage, mask set or attention backend needs no edit here.

Run ``python -m salt_fast.config [FILE] [KEY=VALUE ...]`` to print a resolved config, or
``python -m salt_fast.config --describe`` for the table.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from salt_fast.checkpoint import CheckpointError
from salt_fast.data import DECODERS, VideoList
from salt_fast.kernels import KERNEL_CHOICES
from salt_fast.kernels.rope3d import MODES as ROPE_MODES
from salt_fast.masking import MASK_SETS, TRUNCATION_POLICIES
from salt_fast.models import ENCODER_PRESETS, PREDICTOR_CONFIG, ViTConfig
from salt_fast.models.vit import ATTENTION_BACKENDS
from salt_fast.runtime import COMPILE_MODES, DISTRIBUTED, PRECISIONS
from salt_fast.stages import STAGES

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "LogConfig",
    "MaskingConfig",
    "ModelConfig",
    "OptimConfig",
    "RuntimeConfig",
    "TrainConfig",
    "check_run_inputs",
    "config_from_dict",
    "describe_config",
    "load_config",
    "save_config",
]


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or holds a value that is not allowed."""


def _f(default: Any = dataclasses.MISSING, *, help: str, choices: Collection[str] = (), factory: Any = None):
    """A dataclass field carrying its one-line meaning and allowed values as metadata. ``choices``
    is kept as given (a registry such as ``STAGES`` stays live: a stage registered later is valid)."""
    metadata = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    encoder: str = _f("vit_l", help="stage-1 encoder / stage-2 student preset (salt_fast.models.ENCODER_PRESETS)")
    encoder_overrides: dict = _f(factory=dict, help="any ViTConfig field of the encoder, e.g. {depth: 2}")
    teacher: str = _f("vit_l", help="stage 2: teacher preset")
    teacher_overrides: dict = _f(factory=dict, help="any ViTConfig field of the teacher")
    teacher_checkpoint: Optional[str] = _f(None, help="stage 2: exported stage-1 encoder (.safetensors)")
    predictor_overrides: dict = _f(
        factory=dict, help="fields of salt_fast.models.PREDICTOR_CONFIG (embed_dim 384, depth 12, heads 16)"
    )
    rope_mode: str = _f("standard", help="3D RoPE convention of every model", choices=ROPE_MODES)
    attn_backend: str = _f("sdpa", help="attention backend (how attention runs; not part of the weights)",
                           choices=ATTENTION_BACKENDS)  # fmt: skip

    def encoder_vit(self) -> ViTConfig:
        """The stage-1 encoder / stage-2 student shape: preset + overrides + ``rope_mode``."""
        return _vit("model.encoder_overrides", _preset("model.encoder", self.encoder), self.encoder_overrides, self)

    def teacher_vit(self) -> ViTConfig:
        """The stage-2 teacher shape (stage ``salt``; ``vjepa``'s EMA teacher has the student's shape)."""
        return _vit("model.teacher_overrides", _preset("model.teacher", self.teacher), self.teacher_overrides, self)

    def predictor_vit(self) -> ViTConfig:
        """The predictor / pixel-decoder body: ``PREDICTOR_CONFIG`` + ``predictor_overrides`` + ``rope_mode``."""
        return _vit("model.predictor_overrides", PREDICTOR_CONFIG, self.predictor_overrides, self)


@dataclass
class DataConfig:
    train_lists: list[str] = _f(
        factory=list, help='file lists ("path label" lines); empty = the built-in synthetic videos'
    )
    weights: Optional[list[float]] = _f(None, help="sampling weight per train list (null = proportional to size)")
    synthetic_videos: int = _f(64, help="number of synthetic videos, used when train_lists is empty")
    synthetic_dir: Optional[str] = _f(None, help="where synthetic videos are written (null = <output_dir>/synthetic)")
    frames: int = _f(16, help="frames per clip")
    frame_step: int = _f(4, help="stride between sampled frames")
    resolution: int = _f(224, help="clip height and width in pixels")
    batch_size: int = _f(24, help="clips per process per step")
    num_workers: int = _f(8, help="data loader worker processes")
    max_bad_fraction: float = _f(0.5, help="fail a batch when more than this fraction of its decodes fail")
    decoder: str = _f("cpu", help="video decoder", choices=DECODERS)


@dataclass
class MaskingConfig:
    configs: str = _f("multi_block", help="mask configurations (salt_fast.masking.MASK_SETS)", choices=MASK_SETS)
    truncation: str = _f("min", help="ragged id lists to a batch (min is V-JEPA 2's)", choices=TRUNCATION_POLICIES)


@dataclass
class OptimConfig:
    steps: int = _f(240_000, help="total optimizer steps")
    lr_start: float = _f(2e-4, help="learning rate at step 0 (linear warmup start)")
    lr_peak: float = _f(6.25e-4, help="learning rate after warmup (cosine decay start)")
    lr_end: float = _f(1e-6, help="learning rate at the last step")
    warmup_steps: int = _f(10_000, help="linear warmup steps")
    weight_decay_start: float = _f(0.04, help="weight decay at step 0 (cosine schedule)")
    weight_decay_end: float = _f(0.4, help="weight decay at the last step")
    betas: tuple[float, float] = _f((0.9, 0.95), help="AdamW betas")
    grad_clip: float = _f(0.02, help="global gradient-norm clip")
    ema_momentum: float = _f(0.99925, help='EMA teacher momentum, stage "vjepa" only (V-JEPA 2: constant)')


@dataclass
class RuntimeConfig:
    precision: str = _f("auto", help="auto is bf16 autocast on GPU, fp32 on CPU", choices=PRECISIONS)
    compile: bool = _f(False, help="torch.compile the models")
    compile_mode: str = _f("default", help="torch.compile mode (reduce-overhead: CUDA graphs)", choices=COMPILE_MODES)
    activation_checkpointing: bool = _f(False, help="recompute transformer blocks in the backward pass")
    distributed: str = _f("ddp", help="data parallelism", choices=DISTRIBUTED)
    kernels: str = _f("auto", help="kernel implementation (sets SALT_FAST_KERNELS)", choices=KERNEL_CHOICES)


@dataclass
class CheckpointConfig:
    every: int = _f(1000, help="save a checkpoint every this many steps")
    keep: int = _f(3, help="number of most recent checkpoints kept")
    resume: str = _f("auto", help="auto (latest in output_dir, if any) | never | a checkpoint path")


@dataclass
class LogConfig:
    every: int = _f(10, help="log metrics every this many steps")
    tensorboard: bool = _f(True, help="write TensorBoard event files")
    progress: bool = _f(True, help="show a progress bar")


@dataclass
class TrainConfig:
    stage: str = _f("salt", help="what is trained (salt_fast.stages.STAGES)", choices=STAGES)
    seed: int = _f(0, help="random seed")
    output_dir: str = _f("runs/default", help="checkpoints, logs, the resolved config and the exported encoder")
    model: ModelConfig = _f(factory=ModelConfig, help="models")
    data: DataConfig = _f(factory=DataConfig, help="data")
    masking: MaskingConfig = _f(factory=MaskingConfig, help="masking")
    optim: OptimConfig = _f(factory=OptimConfig, help="optimizer and schedules")
    runtime: RuntimeConfig = _f(factory=RuntimeConfig, help="runtime")
    checkpoint: CheckpointConfig = _f(factory=CheckpointConfig, help="checkpoints")
    log: LogConfig = _f(factory=LogConfig, help="logging")

    def to_dict(self) -> dict:
        """The config as nested plain dicts/lists/scalars (tuples become lists), ready for YAML."""
        return _plain(dataclasses.asdict(self))


# --------------------------------------------------------------------------------------------
# YAML: SafeLoader, plus floats written without a dot ("1e-6"), which YAML 1.1 reads as strings.


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# --------------------------------------------------------------------------------------------
# Types


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _split_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != len(typing.get_args(tp)) and len(args) == 1:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    inner, optional = _split_optional(tp)
    origin = typing.get_origin(inner)
    if inner is dict or origin is dict:
        name = "mapping"
    elif origin is list:
        name = f"list[{_type_name(typing.get_args(inner)[0])}]"
    elif origin is tuple:
        name = "tuple[" + ", ".join(_type_name(a) for a in typing.get_args(inner)) + "]"
    elif dataclasses.is_dataclass(inner):
        name = "mapping"
    else:
        name = inner.__name__
    return f"{name} or null" if optional else name


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it normalised (ints -> float, lists -> tuple)."""
    inner, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise _type_error(key, tp, value)
    origin = typing.get_origin(inner)
    if inner is bool:
        if isinstance(value, bool):
            return value
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif inner is str:
        if isinstance(value, str):
            return value
    elif inner is dict or origin is dict:
        if isinstance(value, Mapping):
            return _plain(value)
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(inner)
            return [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    elif origin is tuple:
        items = typing.get_args(inner)
        if isinstance(value, (list, tuple)) and len(value) == len(items):
            return tuple(_coerce(f"{key}[{i}]", t, v) for i, (t, v) in enumerate(zip(items, value)))
    else:  # pragma: no cover - an annotation this module does not use
        raise TypeError(f"{key}: unsupported annotation {tp!r}")
    raise _type_error(key, tp, value)


def _plain(value: Any) -> Any:
    """A deep copy made of dicts, lists and scalars (tuples become lists)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Merging a mapping (a YAML file) or one dotted override into a plain dict of the config


def _unknown(key: str, name: str, cls: type) -> ConfigError:
    known = list(_fields(cls))
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{key}: unknown key{hint} (known: {', '.join(known)})")


def _merge(target: dict, cls: type, mapping: Any, prefix: str) -> None:
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{prefix or '<top level>'}: expected mapping, got {mapping!r} ({type(mapping).__name__})")
    hints = _hints(cls)
    for name, value in mapping.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in hints:
            raise _unknown(key, str(name), cls)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            _merge(target[name], tp, value, key)
        else:
            target[name] = _coerce(key, tp, value)


def _apply_override(target: dict, override: str) -> None:
    if not isinstance(override, str) or "=" not in override:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. optim.steps=100")
    dotted, text = override.split("=", 1)
    dotted = dotted.strip()
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r}: malformed key {dotted!r}")
    try:
        value = _yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{dotted}: cannot parse value {text!r} as YAML: {exc}") from None

    cls: type = TrainConfig
    node = target
    for i, name in enumerate(parts):
        key = ".".join(parts[: i + 1])
        hints = _hints(cls)
        if name not in hints:
            raise _unknown(key, name, cls)
        tp = hints[name]
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(tp):
            if last:
                _merge(node[name], tp, value, key)
                return
            cls, node = tp, node[name]
            continue
        if last:
            node[name] = _coerce(key, tp, value)
            return
        inner, _ = _split_optional(tp)
        if not (inner is dict or typing.get_origin(inner) is dict):
            raise ConfigError(f"{dotted}: unknown key ({key} is a {_type_name(tp)}, not a section)")
        # A free-form mapping field: walk (and create) nested dicts for the remaining parts.
        node = node[name]
        for sub in parts[i + 1 : -1]:
            if not isinstance(node.get(sub), dict):
                node[sub] = {}
            node = node[sub]
        node[parts[-1]] = _plain(value)
        return


def _build(cls: type, data: dict) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        kwargs[name] = _build(tp, value) if dataclasses.is_dataclass(tp) else _coerce(name, tp, value)
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Validation: choices, ranges and model shapes


def _vit(key: str, base: ViTConfig, overrides: Mapping, model: ModelConfig) -> ViTConfig:
    for name in ("rope_mode", "attn_backend"):
        if name in overrides:
            raise ConfigError(f"{key}.{name}: set model.{name} instead (it applies to every model)")
    known = {f.name for f in dataclasses.fields(ViTConfig)}
    for name in overrides:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}.{name}: unknown ViTConfig field{hint}")
    try:
        return dataclasses.replace(base, **overrides, rope_mode=model.rope_mode)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _preset(key: str, name: str) -> ViTConfig:
    if name not in ENCODER_PRESETS:
        raise ConfigError(f"{key}: unknown preset {name!r}; expected one of {', '.join(ENCODER_PRESETS)}")
    return ENCODER_PRESETS[name]


def _check_choices(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, key)
        elif f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise ConfigError(f"{key}: expected one of {', '.join(f.metadata['choices'])}, got {value!r}")


def _require(ok: bool, key: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: must be {what}, got {value!r}")


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Raise ConfigError for a bad choice or range; return ``cfg`` unchanged."""
    _check_choices(cfg, "")
    d, o, m = cfg.data, cfg.optim, cfg.model

    _require(cfg.seed >= 0, "seed", ">= 0", cfg.seed)
    _require(cfg.output_dir.strip() != "", "output_dir", "a non-empty path", cfg.output_dir)

    encoder = m.encoder_vit()
    m.teacher_vit()
    m.predictor_vit()
    if m.teacher_checkpoint is not None:
        _require(m.teacher_checkpoint.strip() != "", "model.teacher_checkpoint", "a path or null", m.teacher_checkpoint)

    if d.weights is not None:
        _require(
            len(d.weights) == len(d.train_lists),
            "data.weights",
            f"null or one weight per train list ({len(d.train_lists)})",
            d.weights,
        )
        _require(all(w >= 0 for w in d.weights) and sum(d.weights) > 0, "data.weights", ">= 0 with a positive sum", d.weights)
    _require(d.synthetic_videos >= 1, "data.synthetic_videos", ">= 1", d.synthetic_videos)
    _require(
        d.frames >= 1 and d.frames % encoder.tubelet_size == 0,
        "data.frames",
        f"a positive multiple of the tubelet size {encoder.tubelet_size}",
        d.frames,
    )
    _require(d.frame_step >= 1, "data.frame_step", ">= 1", d.frame_step)
    _require(
        d.resolution >= 1 and d.resolution % encoder.patch_size == 0,
        "data.resolution",
        f"a positive multiple of the patch size {encoder.patch_size}",
        d.resolution,
    )
    _require(d.batch_size >= 1, "data.batch_size", ">= 1", d.batch_size)
    _require(d.num_workers >= 0, "data.num_workers", ">= 0", d.num_workers)
    _require(0.0 <= d.max_bad_fraction <= 1.0, "data.max_bad_fraction", "in [0, 1]", d.max_bad_fraction)

    _require(o.steps >= 1, "optim.steps", ">= 1", o.steps)
    for name in ("lr_start", "lr_peak", "lr_end"):
        _require(getattr(o, name) > 0, f"optim.{name}", "> 0", getattr(o, name))
    _require(0 <= o.warmup_steps <= o.steps, "optim.warmup_steps", f"in [0, optim.steps={o.steps}]", o.warmup_steps)
    for name in ("weight_decay_start", "weight_decay_end"):
        _require(getattr(o, name) >= 0, f"optim.{name}", ">= 0", getattr(o, name))
    _require(all(0.0 <= b < 1.0 for b in o.betas), "optim.betas", "two values in [0, 1)", list(o.betas))
    _require(o.grad_clip > 0, "optim.grad_clip", "> 0", o.grad_clip)
    _require(0.0 <= o.ema_momentum <= 1.0, "optim.ema_momentum", "in [0, 1]", o.ema_momentum)

    c = cfg.checkpoint
    _require(c.every >= 1, "checkpoint.every", ">= 1", c.every)
    _require(c.keep >= 1, "checkpoint.keep", ">= 1", c.keep)
    _require(c.resume.strip() != "", "checkpoint.resume", "auto, never or a checkpoint path", c.resume)
    _require(cfg.log.every >= 1, "log.every", ">= 1", cfg.log.every)
    return cfg


# --------------------------------------------------------------------------------------------
# Public API


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``KEY=VALUE`` overrides; validated."""
    if isinstance(overrides, str):
        overrides = [overrides]
    data = TrainConfig().to_dict()
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            with open(path, encoding="utf-8") as fh:
                loaded = _yaml_load(fh.read())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None:
            if not isinstance(loaded, Mapping):
                raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
            _merge(data, TrainConfig, loaded, "")
    for override in overrides:
        _apply_override(data, override)
    return validate_config(_build(TrainConfig, data))


def check_run_inputs(cfg: TrainConfig) -> None:
    """Check the files a run of ``cfg`` will read, before anything is built or written: every
    train list (exists, each line parses), the stage's inputs (a salt teacher export that
    matches ``model.teacher``) and an explicit ``checkpoint.resume`` path. Raises ConfigError
    naming the key and the problem in one line."""
    for i, path in enumerate(cfg.data.train_lists):
        try:
            VideoList.from_file(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"data.train_lists[{i}]: {exc}") from None
    try:
        STAGES[cfg.stage].check_inputs(cfg.model)
    except (OSError, ValueError, CheckpointError) as exc:
        raise ConfigError(f"model.teacher_checkpoint: {exc}") from None
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "never") and not Path(resume).is_file():
        raise ConfigError(f"checkpoint.resume: no checkpoint file at {resume}")


def config_from_dict(values: Mapping) -> TrainConfig:
    """A config from nested dicts (e.g. the ``config`` entry of a training checkpoint), validated."""
    data = TrainConfig().to_dict()
    _merge(data, TrainConfig, values, "")
    return validate_config(_build(TrainConfig, data))


def save_config(cfg: TrainConfig, path: str) -> None:
    """Write the resolved config as YAML; ``load_config(path)`` gives back an equal config."""
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False, default_flow_style=False)


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(_leaves(hints[f.name], key))
        else:
            out.append((key, f))
    return out


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _choice(name: str, choices: Collection[str]) -> str:
    """A choice as the config table shows it: with its registry entry's ``summary`` when it has one."""
    summary = getattr(choices[name], "summary", None) if isinstance(choices, Mapping) else None
    return f"{name} ({summary})" if summary else name


def describe_config() -> str:
    """A Markdown table of every key, its default and its meaning."""
    defaults = TrainConfig().to_dict()
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, f in _leaves(TrainConfig):
        value: Any = defaults
        for part in key.split("."):
            value = value[part]
        meaning = f.metadata["help"]
        choices = f.metadata["choices"]
        if choices:
            meaning += ": " + " | ".join(_choice(name, choices) for name in choices)
        lines.append(f"| `{key}` | `{_show(value)}` | {meaning.replace('|', '&#124;')} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m salt_fast.config [--describe] [FILE.yaml] [KEY=VALUE ...]")
        return 0
    if args and args[0] == "--describe":
        print(describe_config())
        return 0
    path = args.pop(0) if args and "=" not in args[0] else None
    try:
        cfg = load_config(path, args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    yaml.safe_dump(cfg.to_dict(), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
