"""V-JEPA 2 checkpoints (facebookresearch/vjepa2) in and out of salt_fast models.

**Their layout.** ``app/vjepa/train.py`` saves, with ``torch.save``, a dict::

    {"encoder": sd, "predictor": sd, "target_encoder": sd, "opt": ..., "scaler": ...,
     "epoch": int, "loss": float, "batch_size": int, "world_size": int, "lr": float}

where each ``sd`` is the ``state_dict()`` of ``DistributedDataParallel(MultiSeqWrapper(model))``,
so every key starts with ``module.backbone.``; their evaluation code and ``torch.hub`` loaders
strip ``module.`` and ``backbone.`` and read ``encoder`` or ``target_encoder`` (the eval configs'
``checkpoint_key``) and ``predictor``. Under the prefixes, the names are salt_fast's own
(the modules were named after V-JEPA 2's), so the key mapping is the identity:

=====================================  =================================  ==========================
key (after the prefixes)               shape                              notes
=====================================  =================================  ==========================
``patch_embed.proj.weight / .bias``    ``[D, C, tubelet, p, p]`` / ``[D]``  Conv3d, kernel = stride
``blocks.{i}.norm1 / norm2.*``         ``[D]``                            LayerNorm, eps 1e-6
``blocks.{i}.attn.qkv.weight / .bias`` ``[3D, D]`` / ``[3D]``              q, k, v stacked, heads inner
``blocks.{i}.attn.proj.*``             ``[D, D]`` / ``[D]``
``blocks.{i}.mlp.fc1.* / fc2.*``       ``[M, D]`` / ``[D, M]``            GELU MLP
``norm.*``                             ``[D]``
``pos_embed``                          ``[1, N, D]``                      unused with RoPE: dropped
``predictor_embed.*``                  ``[P, D_in]`` / ``[P]``
``mask_tokens.{j}``                    ``[1, 1, P]``                      one per mask token
``predictor_blocks.{i}.*``             as ``blocks``, width ``P``
``predictor_norm.*``                   ``[P]``
``predictor_proj.*``                   ``[D_out, P]`` / ``[D_out]``
``predictor_pos_embed``                ``[1, N, P]``                      unused with RoPE: dropped
=====================================  =================================  ==========================

**What the weights do not say.** Width, depth, MLP width, patch and tubelet sizes, qkv bias
and the number of mask tokens are read from the shapes. The head count is not (``qkv`` is
``[3D, D]`` for any count), so it comes from, in order: the ``encoder_heads`` /
``predictor_heads`` arguments, the ``salt_fast`` entry that ``save_vjepa2_checkpoint`` writes,
or V-JEPA 2's convention for that width: 3, 6, 12, 16, 16 heads for widths 192, 384, 768,
1024, 1280 and **22 for 1408** (their released giant, ``vit_giant_xformers``; salt_fast's
``vit_g`` has 16, which a salt_fast-saved file records) and 12 for the 384-wide predictor
(their configs' ``pred_num_heads``). Width 1664 is ambiguous in their code (``vit_gigantic``
16, ``vit_gigantic_xformers`` 26): pass ``encoder_heads``. RoPE is ``mode="vjepa2"``
(their tiled frequencies) unless the ``salt_fast`` entry or ``rope_mode`` says otherwise.

**Strict.** Any missing key, unexpected key or mis-shaped tensor, in any loaded entry, raises
:class:`Vjepa2CheckpointError` listing all of them. The one tolerated extra is the
``pos_embed`` / ``predictor_pos_embed`` table of a RoPE model (V-JEPA 2's own hub loader
skips it with ``strict=False``); ``ignore_pos_embed=False`` makes it an error too.
salt_fast models are RoPE-only: a checkpoint trained with ``use_rope: false`` (V-JEPA 1
style, positions in ``pos_embed``) cannot be told apart by its keys and must not be loaded.

**Conventions that differ** (documented, not converted):

* V-JEPA 2's predictor picks its mask token by clip-length group (``mask_index`` =
  the group's index in ``PredictorMultiSeqWrapper``); salt_fast's picks it per mask
  configuration. Pass the index you want as ``Predictor(..., mask_index=j)``.
* V-JEPA 2's predictor decodes token ids with its square training grid (``crop // patch``);
  salt_fast's with the grid it is given: equal for square clips at that crop.
* V-JEPA 2 computes RoPE angles in the activation dtype (bf16 under autocast); salt_fast in fp32.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from salt_fast.checkpoint import _atomic_write
from salt_fast.models.predictor import Predictor
from salt_fast.models.vit import ENCODER_PRESETS, ViTConfig, VisionTransformer

__all__ = [
    "VJEPA2_ENCODER_HEADS",
    "VJEPA2_PREDICTOR_HEADS",
    "PredictorSpec",
    "Vjepa2CheckpointError",
    "Vjepa2Models",
    "infer_encoder_config",
    "infer_predictor_spec",
    "load_vjepa2_checkpoint",
    "matching_preset",
    "save_vjepa2_checkpoint",
]

MODEL_ENTRIES = ("encoder", "target_encoder", "predictor")
PREFIXES = ("module.", "backbone.")  # DistributedDataParallel, then MultiSeqWrapper
SAVE_PREFIX = "module.backbone."  # what V-JEPA 2's train.py writes
POS_EMBED_KEY = {"encoder": "pos_embed", "target_encoder": "pos_embed", "predictor": "predictor_pos_embed"}
# V-JEPA 2's presets (src/models/vision_transformer.py) by width. 1408 is its released giant,
# vit_giant_xformers (22 heads of 64, MLP 48/11 x 1408 = 6144); 1664 is ambiguous there.
VJEPA2_ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 22}
_AMBIGUOUS_ENCODER_HEADS = {1664: "vit_gigantic has 16, vit_gigantic_xformers 26"}
VJEPA2_PREDICTOR_HEADS = 12  # configs/train/*/pretrain-*.yaml: pred_num_heads: 12
VJEPA2_NORM_EPS = 1e-6
METADATA_KEY = "salt_fast"
METADATA_FORMAT = 1
_BLOCK_INDEX = re.compile(r"^(blocks|predictor_blocks)\.(\d+)\.")
_MASK_TOKEN = re.compile(r"^mask_tokens\.(\d+)$")


class Vjepa2CheckpointError(ValueError):
    """A V-JEPA 2 checkpoint does not fit salt_fast models (or the models cannot be saved as one).

    ``missing``, ``unexpected`` and ``mismatched`` hold the offending keys as
    ``"<entry>: <key as stored>"`` (``mismatched`` adds the two shapes); the message lists them all.
    """

    def __init__(
        self,
        message: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
    ) -> None:
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [message]
        for title, keys in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                            ("mis-shaped keys", self.mismatched)):  # fmt: skip
            if keys:
                lines.append(f"  {title} ({len(keys)}):")
                lines.extend(f"    {k}" for k in keys)
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class PredictorSpec:
    """Everything needed to build a :class:`Predictor`: body config, widths, mask tokens."""

    cfg: ViTConfig
    in_dim: int
    out_dim: int
    num_mask_tokens: int

    def build(self, attn_backend: str = "sdpa") -> Predictor:
        return Predictor(self.in_dim, self.out_dim, self.cfg, self.num_mask_tokens, attn_backend)


@dataclass
class Vjepa2Models:
    """What :func:`load_vjepa2_checkpoint` returns; an entry absent from the file (or not
    requested) is None. ``target_encoder`` comes back with ``requires_grad`` off."""

    encoder: VisionTransformer | None = None
    target_encoder: VisionTransformer | None = None
    predictor: Predictor | None = None
    epoch: int | None = None
    encoder_preset: str | None = None  # the salt_fast preset the encoder(s) match, see matching_preset
    ignored_keys: list[str] = field(default_factory=list)  # "<entry>: <key>" dropped (pos-embed tables)


# ----------------------------------------------------------------------------- key handling


def _strip_prefixes(key: str) -> str:
    """``module.backbone.blocks.0...`` -> ``blocks.0...``: leading wrapper prefixes, any order."""
    while True:
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        else:
            return key


def _strip_entry(
    entry: str, state: Mapping[str, Any], errors: list[str], mismatched: list[str]
) -> tuple[dict[str, Any], dict[str, str], str]:
    """``(stripped key -> tensor, stripped key -> stored key, the entry's prefix)``."""
    stripped: dict[str, Any] = {}
    stored: dict[str, str] = {}
    prefix = ""
    for key, value in state.items():
        if not isinstance(key, str):
            errors.append(f"{entry!r} has a non-string key {key!r}")
            continue
        name = _strip_prefixes(key)
        prefix = prefix or key[: len(key) - len(name)]
        if name in stored:
            errors.append(f"{entry!r}: {stored[name]!r} and {key!r} name the same parameter once prefixes are removed")
            continue
        if not isinstance(value, Tensor):
            mismatched.append(f"{entry}: {key}: a {type(value).__name__}, not a tensor")
            continue
        stripped[name], stored[name] = value, key
    return stripped, stored, prefix


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = state.get(key)
    return tuple(value.shape) if isinstance(value, Tensor) else None


def _depth(state: Mapping[str, Any], blocks: str) -> int:
    indices = [int(m.group(2)) for k in state if (m := _BLOCK_INDEX.match(k)) and m.group(1) == blocks]
    return max(indices) + 1 if indices else 0


def _require(state: Mapping[str, Any], keys: Sequence[str], entry: str, ndims: Sequence[int]) -> list[tuple[int, ...]]:
    """The shapes of the keys that define a model's size; missing or wrong-rank ones raise."""
    missing = [f"{entry}: {k}" for k in keys if _shape(state, k) is None]
    bad = [f"{entry}: {k}: shape {_shape(state, k)}, expected a {n}-d tensor"
           for k, n in zip(keys, ndims) if _shape(state, k) is not None and len(_shape(state, k)) != n]  # fmt: skip
    if missing or bad:
        raise Vjepa2CheckpointError(f"cannot read the {entry}'s size from its weights", missing=missing, mismatched=bad)
    return [_shape(state, k) for k in keys]


# ----------------------------------------------------------------------------- configs from shapes


def _encoder_heads(width: int, explicit: int | None) -> int:
    if explicit is not None:
        return int(explicit)
    if width in VJEPA2_ENCODER_HEADS:
        return VJEPA2_ENCODER_HEADS[width]
    why = _AMBIGUOUS_ENCODER_HEADS.get(width, "no V-JEPA 2 preset has this width")
    raise Vjepa2CheckpointError(
        f"the head count of a width-{width} encoder is not in its weights (qkv is [3D, D] for any count) "
        f"and V-JEPA 2's convention does not fix it ({why}): pass encoder_heads="
    )


def _vit_config(**fields: Any) -> ViTConfig:
    try:
        return ViTConfig(**fields)
    except ValueError as exc:
        raise Vjepa2CheckpointError(f"the weights describe an unbuildable model: {exc}") from exc


def infer_encoder_config(
    state_dict: Mapping[str, Any],
    num_heads: int | None = None,
    rope_mode: str = "vjepa2",
    *,
    norm_eps: float = VJEPA2_NORM_EPS,
) -> ViTConfig:
    """The :class:`ViTConfig` of a V-JEPA 2 encoder state dict, from its shapes alone.

    Args:
        state_dict: encoder keys, with or without ``module.`` / ``backbone.`` prefixes; only the
            tensors' shapes are read (meta tensors work, so giants cost no memory).
        num_heads: the head count; None takes V-JEPA 2's for the width (see the module docstring).
        rope_mode: ``"vjepa2"`` for V-JEPA 2 weights.

    Raises:
        Vjepa2CheckpointError: a size-defining key is missing or has the wrong rank, the
            patch is not square, or the head count cannot be decided.
    """
    state = {_strip_prefixes(k): v for k, v in state_dict.items()}
    patch, fc1 = _require(state, ["patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"], "encoder", [5, 2])
    width, in_chans, tubelet, patch_h, patch_w = patch
    if patch_h != patch_w:
        raise Vjepa2CheckpointError(
            "salt_fast encoders use square patches", mismatched=[f"encoder: patch_embed.proj.weight: shape {patch}"]
        )
    return _vit_config(
        embed_dim=width, depth=_depth(state, "blocks"), num_heads=_encoder_heads(width, num_heads),
        mlp_hidden=fc1[0], patch_size=patch_h, tubelet_size=tubelet, in_chans=in_chans, rope_mode=rope_mode,
        qkv_bias="blocks.0.attn.qkv.bias" in state, norm_eps=norm_eps,
    )  # fmt: skip


def infer_predictor_spec(
    state_dict: Mapping[str, Any],
    num_heads: int | None = None,
    rope_mode: str = "vjepa2",
    *,
    norm_eps: float = VJEPA2_NORM_EPS,
) -> PredictorSpec:
    """The :class:`PredictorSpec` of a V-JEPA 2 predictor state dict, from its shapes alone.

    ``num_heads`` None takes V-JEPA 2's 12 (its configs' ``pred_num_heads``); the number of
    mask tokens is the number of ``mask_tokens.{j}`` keys (V-JEPA 2 writes one per mask
    configuration and clip length, e.g. 10 in its hub checkpoints).
    """
    state = {_strip_prefixes(k): v for k, v in state_dict.items()}
    embed, fc1, proj = _require(
        state, ["predictor_embed.weight", "predictor_blocks.0.mlp.fc1.weight", "predictor_proj.weight"], "predictor", [2, 2, 2]
    )
    tokens = [int(m.group(1)) for k in state if (m := _MASK_TOKEN.match(k))]
    cfg = _vit_config(
        embed_dim=embed[0], depth=_depth(state, "predictor_blocks"),
        num_heads=VJEPA2_PREDICTOR_HEADS if num_heads is None else num_heads, mlp_hidden=fc1[0], rope_mode=rope_mode,
        qkv_bias="predictor_blocks.0.attn.qkv.bias" in state, norm_eps=norm_eps,
    )  # fmt: skip
    return PredictorSpec(cfg, in_dim=embed[1], out_dim=proj[0], num_mask_tokens=max(tokens, default=0) + 1)


def matching_preset(cfg: ViTConfig) -> str | None:
    """The salt_fast preset whose weights have ``cfg``'s shapes: ``"vit_l"``, or e.g.
    ``"vit_g(num_heads=22)"`` for V-JEPA 2's giant; None when no preset has them."""
    for name, preset in ENCODER_PRESETS.items():
        shape = ("embed_dim", "depth", "mlp_hidden", "patch_size", "tubelet_size", "in_chans", "qkv_bias")
        if all(getattr(preset, f) == getattr(cfg, f) for f in shape):
            return name if preset.num_heads == cfg.num_heads else f"{name}(num_heads={cfg.num_heads})"
    return None


# ----------------------------------------------------------------------------- loading


def _read(source: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(source, Mapping):
        return source, "<dict>"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"V-JEPA 2 checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # data only: never runs code from the file
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise Vjepa2CheckpointError(
            f"{path}: cannot be read as a torch checkpoint of tensors and plain data ({type(exc).__name__}: {first}); "
            "a file you trust that holds other Python objects can be loaded by you and passed here as a dict"
        ) from exc
    if not isinstance(ckpt, Mapping):
        raise Vjepa2CheckpointError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt, str(path)


def _as_checkpoint(ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
    """A bare state dict (one model's keys at top level) becomes ``{"encoder" | "predictor": it}``."""
    if any(e in ckpt for e in MODEL_ENTRIES) or not ckpt or not all(isinstance(v, Tensor) for v in ckpt.values()):
        return ckpt
    is_predictor = any(_strip_prefixes(k).startswith(("predictor_", "mask_tokens.")) for k in ckpt)
    return {"predictor" if is_predictor else "encoder": ckpt}


def _check_metadata(metadata: Any, where: str) -> Mapping[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping) or metadata.get("format") != METADATA_FORMAT:
        raise Vjepa2CheckpointError(f"{where}: unsupported {METADATA_KEY!r} entry {metadata!r}")
    return metadata


def _build(entry: str, state: Mapping[str, Any], metadata: Mapping[str, Any] | None, opts: dict[str, Any]) -> nn.Module:
    """A salt_fast model on the meta device for one checkpoint entry (shapes only).

    A salt_fast-written file records each model's config: that record, not the shapes, then
    defines the model, so the strict key check compares every tensor against it.
    """
    record = dict(metadata.get("entries", {}).get(entry, {})) if metadata else {}
    recorded = dict(record.get("config", {}))
    recorded.pop("attn_backend", None)  # a runtime choice; never part of the weights
    mode = opts["rope_mode"] or recorded.get("rope_mode", "vjepa2")
    runtime = {"rope_mode": mode}
    heads = opts["predictor_heads" if entry == "predictor" else "encoder_heads"]
    if heads is not None:
        runtime["num_heads"] = int(heads)
    try:
        if entry == "predictor":
            if recorded:
                cfg = _vit_config(**{**recorded, **runtime})
                spec = PredictorSpec(cfg, int(record["in_dim"]), int(record["out_dim"]), int(record["num_mask_tokens"]))
            else:
                spec = infer_predictor_spec(state, heads, mode)
            with torch.device("meta"):
                return spec.build(opts["attn_backend"])
        if opts["encoder_preset"] is not None:
            cfg = _vit_config(**{**asdict(ENCODER_PRESETS[opts["encoder_preset"]]), **runtime})
        elif recorded:
            cfg = _vit_config(**{**recorded, **runtime})
        else:
            cfg = infer_encoder_config(state, heads, mode)
    except (KeyError, TypeError) as exc:
        raise Vjepa2CheckpointError(f"malformed {METADATA_KEY!r} record {record!r} ({type(exc).__name__}: {exc})") from exc
    with torch.device("meta"):
        return VisionTransformer(cfg, opts["attn_backend"])


def load_vjepa2_checkpoint(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    entries: Sequence[str] | None = None,
    encoder_preset: str | None = None,
    encoder_heads: int | None = None,
    predictor_heads: int | None = None,
    rope_mode: str | None = None,
    attn_backend: str = "sdpa",
    ignore_pos_embed: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
) -> Vjepa2Models:
    """salt_fast models from a V-JEPA 2 checkpoint (file or already loaded dict).

    Args:
        source: a path to a ``torch.save`` file in V-JEPA 2's layout (see the module
            docstring), the dict itself, or a bare encoder / predictor state dict.
        entries: which of ``"encoder"``, ``"target_encoder"``, ``"predictor"`` to load; None
            loads every one present. A requested entry that is absent is an error.
        encoder_preset: a salt_fast preset name (``"vit_l"``, ``"vit_g"`` ...) the encoders
            must match; None infers the config from the shapes.
        encoder_heads, predictor_heads: head counts, when the file's own record or V-JEPA 2's
            convention should not decide (see the module docstring).
        rope_mode: None = ``"vjepa2"`` (or what a salt_fast-written file records).
        attn_backend: the models' attention backend (a runtime choice, not in the weights).
        ignore_pos_embed: drop the unused ``pos_embed`` / ``predictor_pos_embed`` of RoPE
            checkpoints (listed in ``ignored_keys``); False makes them unexpected keys.
        device, dtype: where the weights go, and the dtype of floating tensors (None keeps the
            file's). The models are built on the meta device and take the checkpoint tensors
            as their parameters (no random init, no extra copy; tensors of a dict ``source``
            already on ``device`` in ``dtype`` are shared, not copied).
        (a path is read with ``torch.load(weights_only=True)``: tensors and plain containers only)

    Returns:
        :class:`Vjepa2Models` with ``epoch`` from the file when present.

    Raises:
        FileNotFoundError: ``source`` is a path to no file.
        Vjepa2CheckpointError: unreadable file, no model entry, or any missing, unexpected or
            mis-shaped key in the loaded entries (all listed in one error).
    """
    if encoder_preset is not None and encoder_preset not in ENCODER_PRESETS:
        raise ValueError(f"unknown encoder_preset {encoder_preset!r}; presets: {', '.join(ENCODER_PRESETS)}")
    ckpt, where = _read(source)
    ckpt = _as_checkpoint(ckpt)
    present = [e for e in MODEL_ENTRIES if ckpt.get(e) is not None]
    if entries is None:
        wanted = present
        if not wanted:
            top = sorted(map(str, ckpt))[:20]
            raise Vjepa2CheckpointError(f"{where}: no 'encoder', 'target_encoder' or 'predictor' entry (top-level keys: {top})")
    else:
        wanted = list(entries)
        unknown = [e for e in wanted if e not in MODEL_ENTRIES]
        if unknown:
            raise ValueError(f"unknown entries {unknown}; expected some of {MODEL_ENTRIES}")
        absent = [e for e in wanted if e not in present]
        if absent:
            raise Vjepa2CheckpointError(f"{where}: requested entries {absent} are not in the checkpoint (it has {present})")
    metadata = _check_metadata(ckpt.get(METADATA_KEY), where)
    opts = dict(encoder_preset=encoder_preset, encoder_heads=encoder_heads, predictor_heads=predictor_heads,
                rope_mode=rope_mode, attn_backend=attn_backend)  # fmt: skip

    errors: list[str] = []
    missing: list[str] = []
    unexpected: list[str] = []
    mismatched: list[str] = []
    ignored: list[str] = []
    built: dict[str, tuple[nn.Module, dict[str, Tensor]]] = {}
    for entry in wanted:
        if not isinstance(ckpt[entry], Mapping):
            errors.append(f"{entry!r} is a {type(ckpt[entry]).__name__}, not a state dict")
            continue
        state, stored, prefix = _strip_entry(entry, ckpt[entry], errors, mismatched)
        pos_key = POS_EMBED_KEY[entry]
        if ignore_pos_embed and pos_key in state:
            state.pop(pos_key)
            ignored.append(f"{entry}: {stored[pos_key]}")
        try:
            model = _build(entry, state, metadata, opts)
        except Vjepa2CheckpointError as exc:  # keys named as stored, under this entry's name

            def relabel(item: str) -> str:
                return f"{entry}: {prefix}{item.split(': ', 1)[1]}"

            errors.append(f"{entry}: {str(exc).splitlines()[0]}")
            missing += map(relabel, exc.missing)
            mismatched += map(relabel, exc.mismatched)
            continue
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing += [f"{entry}: {prefix}{k}" for k in expected if k not in state]
        unexpected += [f"{entry}: {stored[k]}" for k in state if k not in expected]
        mismatched += [f"{entry}: {stored[k]}: checkpoint {tuple(v.shape)} vs model {expected[k]}"
                       for k, v in state.items() if k in expected and tuple(v.shape) != expected[k]]  # fmt: skip
        built[entry] = (model, state)
    if errors or missing or unexpected or mismatched:
        head = "; ".join(errors) if errors else "it does not match the salt_fast models"
        raise Vjepa2CheckpointError(f"V-JEPA 2 checkpoint {where}: {head}", missing, unexpected, mismatched)

    out = Vjepa2Models(ignored_keys=ignored)
    for entry, (model, state) in built.items():
        tensors = {k: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else None)
                   for k, v in state.items()}  # fmt: skip
        model.load_state_dict(tensors, strict=True, assign=True)
        setattr(out, entry, model)
    if out.target_encoder is not None:
        out.target_encoder.requires_grad_(False)
    encoder = out.encoder or out.target_encoder
    out.encoder_preset = matching_preset(encoder.cfg) if encoder is not None else None
    epoch = ckpt.get("epoch")
    out.epoch = int(epoch) if isinstance(epoch, int) else None
    return out


# ----------------------------------------------------------------------------- saving


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _entry_state(model: nn.Module) -> dict[str, Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        if hasattr(value, "full_tensor"):  # FSDP2 DTensor: gather the full parameter
            value = value.full_tensor()
        state[SAVE_PREFIX + key] = value.detach().to("cpu")
    return state


def save_vjepa2_checkpoint(
    path: str | os.PathLike,
    *,
    encoder: nn.Module | None = None,
    predictor: nn.Module | None = None,
    target_encoder: nn.Module | None = None,
    epoch: int = 0,
    extra: Mapping[str, Any] | None = None,
    allow_standard_rope: bool = False,
) -> Path:
    """Write salt_fast models as a V-JEPA 2 training checkpoint, atomically (``torch.save``).

    The file is what V-JEPA 2's ``app/vjepa/train.py`` writes: entries ``encoder``,
    ``predictor``, ``target_encoder`` (those given) with ``module.backbone.`` keys, and
    ``opt``, ``scaler``, ``loss``, ``batch_size``, ``world_size``, ``lr`` (None unless set in
    ``extra``) and ``epoch``. Their eval code reads it with ``checkpoint_key: encoder`` (or
    ``target_encoder`` when one is written), ``use_rope: true`` and the V-JEPA 2 preset of the
    same shapes (``vit_large`` for vit_l; ``vit_giant_rope`` for salt_fast's 16-head vit_g;
    for vit_G, ``vit_gigantic`` with ``mlp_ratio: 64/13`` given, as its preset misspells it).
    A ``salt_fast`` entry records each model's config (heads, RoPE mode) so that
    :func:`load_vjepa2_checkpoint` rebuilds exactly these models; V-JEPA 2 ignores it.

    Args:
        path: the file to write (parent folders are created).
        encoder, target_encoder: :class:`VisionTransformer` (or DDP / torch.compile wrappers).
        predictor: :class:`Predictor`.
        epoch: stored as ``epoch``.
        extra: more top-level entries (e.g. ``{"opt": optimizer.state_dict()}``).
        allow_standard_rope: V-JEPA 2's code always applies ``vjepa2``-mode RoPE, so a model
            trained with ``rope_mode="standard"`` would compute something else there; such
            models are refused unless this is True (salt_fast reloads them correctly either way).

    Returns:
        ``Path(path)``.
    """
    models = {"encoder": encoder, "predictor": predictor, "target_encoder": target_encoder}
    models = {k: _unwrap(m) for k, m in models.items() if m is not None}
    if not models:
        raise ValueError("nothing to save: pass encoder=, predictor= and/or target_encoder=")
    meta_entries: dict[str, Any] = {}
    for entry, model in models.items():
        kind = Predictor if entry == "predictor" else VisionTransformer
        if not isinstance(model, kind):
            raise TypeError(f"{entry} must be a salt_fast {kind.__name__}, got {type(model).__name__}")
        if model.cfg.rope_mode != "vjepa2" and not allow_standard_rope:
            raise Vjepa2CheckpointError(
                f"{entry} uses rope_mode={model.cfg.rope_mode!r}, but V-JEPA 2's code applies its own 'vjepa2' RoPE, "
                "so its evaluation would run a different network; train with model.rope_mode=vjepa2, or pass "
                "allow_standard_rope=True to write it anyway (salt_fast's loader restores the recorded mode)"
            )
        record: dict[str, Any] = {"config": asdict(model.cfg)}
        if entry == "predictor":
            record.update(in_dim=model.in_dim, out_dim=model.out_dim, num_mask_tokens=len(model.mask_tokens))
        meta_entries[entry] = record
    payload: dict[str, Any] = {"opt": None, "scaler": None, "epoch": int(epoch), "loss": None, "batch_size": None,
                               "world_size": None, "lr": None}  # fmt: skip
    for key, value in (extra or {}).items():
        if key in MODEL_ENTRIES or key == METADATA_KEY:
            raise ValueError(f"extra may not set {key!r}")
        payload[key] = value
    payload.update({entry: _entry_state(model) for entry, model in models.items()})
    payload[METADATA_KEY] = {"format": METADATA_FORMAT, "entries": meta_entries}
    path = Path(path)
    _atomic_write(path, lambda _tmp, f: torch.save(payload, f))
    return path
