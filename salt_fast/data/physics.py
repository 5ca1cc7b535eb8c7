"""Intuitive-physics test videos: possible and impossible clips made from shared halves.

The surprise test (``salt_fast.eval.surprise``; the paper's Appendix E.1, after Garrido et al.
2025) asks whether a model is more surprised by a clip that breaks a physical rule than by
one that does not. Compared naively, the impossible clip may differ in what it shows (a clip
where the shape vanishes has fewer shape pixels to predict), and a model can win or lose for
that reason alone. IntPhys (Riochet et al. 2018) removes the confound with matched
quadruplets, and so does this module: per item it renders two first halves ``A1``, ``A2``
and two second halves ``B1``, ``B2`` such that ``A1+B1`` and ``A2+B2`` are possible and
``A1+B2``, ``A2+B1`` impossible. Every half appears once among the possible clips and once
among the impossible ones, so the two sets hold the same frames; only how the halves join
differs. An item is solved when the impossible pair is more surprising in total.

Kinds (what the two impossible clips break):

- ``permanence``: the shape is there throughout (``A1+B1``) or never (``A2+B2``); impossible:
  it vanishes at mid-clip (``A1+B2``) or appears from nowhere (``A2+B1``).
- ``teleport``: two parallel tracks with the same motion, offset across the direction of
  motion by at least a shape's width plus 4 px; impossible: the shape jumps to the other track.
- ``colour``: one colour throughout or another; impossible: the colour changes.
- ``shape``: one shape throughout or another; impossible: the shape changes.
- ``reverse``: moving one way or the opposite way through the same point ``P`` at mid-clip;
  impossible: the shape reaches ``P`` and turns back in mid-air (no wall, nothing hits it).

**Pairs** are the weaker, commoner test: one first half with a possible and an impossible
second half. They come from the same videos: ``vanish`` = (``A1+B1``, ``A1+B2``) and
``appear`` = (``A2+B2``, ``A2+B1``) of the permanence items; for the other kinds, even items
give (``A1+B1``, ``A1+B2``) and odd items (``A2+B2``, ``A2+B1``).

Everything else is the training videos' (:mod:`salt_fast.data.synthetic`): the shapes, colours,
radius, anti-aliased drawing, backgrounds, axis-aligned motion, and a speed drawn from the
training clips' own range (:func:`~salt_fast.data.synthetic.pixel_speed`), capped so that the
path stays inside the frame; VP9 files like the other synthetic videos.

    from salt_fast.data import make_physics_dataset
    make_physics_dataset("physics", num_items=40)   # physics/physics_<kind>_quads.txt, _pairs.txt, videos
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .synthetic import (
    _CODECS,
    _DEFAULT_SUFFIX,
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    RADIUS_FRACTION,
    SHAPES,
    _background,
    _coverage,
    pixel_speed,
    write_video,
)

__all__ = ["KINDS", "PAIR_KINDS", "QUAD_NAMES", "Quad", "make_physics_dataset", "render_quad"]

KINDS: tuple[str, ...] = ("permanence", "teleport", "colour", "shape", "reverse")
PAIR_KINDS: tuple[str, ...] = ("vanish", "appear", "teleport", "colour", "shape", "reverse")
# A quadruplet's clips in list order: possible, possible, impossible, impossible.
QUAD_NAMES: tuple[str, ...] = ("a1b1", "a2b2", "a1b2", "a2b1")


class Quad(NamedTuple):
    """One item: four uint8 ``[T, H, W, 3]`` clips (``A1+B1``, ``A2+B2`` possible; ``A1+B2``,
    ``A2+B1`` impossible) and what was drawn to make them."""

    clips: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    info: dict


def _draw(frame0: np.ndarray, shapes, colours, centres, radius: float) -> np.ndarray:
    """Frames of one half: per frame a shape name (None: no shape), an RGB colour and a centre."""
    height, width, _ = frame0.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((len(centres), height, width, 3), dtype=np.uint8)
    for t, (shape, rgb, (cy, cx)) in enumerate(zip(shapes, colours, centres)):
        frame = frame0
        if shape is not None:
            cover = _coverage(shape, yy, xx, cy, cx, radius)[..., None]
            frame = frame0 * (1 - cover) + np.asarray(rgb, dtype=np.float64) * cover
        out[t] = np.clip(np.rint(frame), 0, 255)
    return out


def render_quad(
    kind: str,
    rng: np.random.Generator,
    frames: int = 16,
    size: int = 64,
    speed: tuple[float, float] | None = None,
    background: str = "plain",
) -> Quad:
    """One item of ``kind`` (see the module docstring): clips of ``frames`` frames (even; the
    violation falls between frames ``frames/2 - 1`` and ``frames/2``) of ``size`` x ``size`` pixels.

    ``speed``: (lo, hi) pixels per frame, drawn uniformly (capped so that the path fits the
    frame); default: the training clips of ``benchmarks/reproduce_small.py`` (32-frame videos
    sampled every 4 frames, :func:`~salt_fast.data.synthetic.pixel_speed`). ``background``:
    "plain" (one flat muted colour, what reproduce_small trains on), "random" or any kind
    :func:`~salt_fast.data.synthetic.render_clip` accepts. Deterministic given the state of ``rng``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if frames < 4 or frames % 2:
        raise ValueError(f"frames must be even and >= 4, got {frames}")
    lo, hi = pixel_speed(size, 32, 4) if speed is None else speed
    if not 0 < lo <= hi:
        raise ValueError(f"speed must be (lo, hi) with 0 < lo <= hi, got {speed!r}")
    half = frames // 2
    r = RADIUS_FRACTION * size
    margin = r + 1.0
    free = size - 2 * margin
    fits = free / frames  # the fastest path that stays inside (a reverse track spans frames/2 steps each side of P)
    if lo > fits:
        raise ValueError(f"{frames} frames at {lo:.2f} px per frame leave a {size} px frame: use fewer frames or a lower speed")
    v = rng.uniform(lo, min(hi, fits))
    bg_kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))] if background == "random" else background
    frame0 = _background(rng, bg_kind, size, size)
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    sign = 1.0 if direction in ("right", "down") else -1.0
    shape_names = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:2]]
    colour_names = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:2]]
    t = np.arange(frames, dtype=np.float64)

    if kind == "reverse":  # the two tracks pass the turning point P at frame `half`, in opposite directions
        p = rng.uniform(margin + v * half, size - margin - v * half)
        along = [p + sign * v * (t - half), p - sign * v * (t - half)]
    else:
        travel = v * (frames - 1)
        start = margin + rng.uniform(0, free - travel)
        along = [start + travel - v * t if sign < 0 else start + v * t] * 2
    across = [rng.uniform(margin, size - margin)] * 2
    if kind == "teleport":
        gap = 2 * r + 4.0
        if free < gap:
            raise ValueError(f"a {size} px frame has no room for two tracks {gap:.1f} px apart")
        while abs(across[1] - across[0]) < gap:  # a second track at least a shape's width + 4 px away
            across[1] = rng.uniform(margin, size - margin)

    def centres(track: int) -> np.ndarray:
        a, o = along[track], np.full(frames, across[track])
        return np.stack([o, a] if direction in ("left", "right") else [a, o], axis=1)

    # Per track (1, 2): what is drawn in every frame; the halves are cut from these.
    tracks = []
    for track in (0, 1):
        shape = shape_names[track] if kind == "shape" else shape_names[0]
        visible = not (kind == "permanence" and track == 1)
        colour = COLOURS[colour_names[track] if kind == "colour" else colour_names[0]]
        tracks.append(_draw(frame0, [shape if visible else None] * frames, [colour] * frames, centres(track), r))
    a1, b1 = tracks[0][:half], tracks[0][half:]
    a2, b2 = tracks[1][:half], tracks[1][half:]
    clips = tuple(np.concatenate(p) for p in ((a1, b1), (a2, b2), (a1, b2), (a2, b1)))
    info = {
        "direction": direction, "speed": float(v), "background": bg_kind, "radius": r,
        "shapes": shape_names if kind == "shape" else shape_names[:1],
        "colours": colour_names if kind == "colour" else colour_names[:1],
        "across": [float(x) for x in (across if kind == "teleport" else across[:1])],
    }  # fmt: skip
    return Quad(clips, info)


def make_physics_dataset(
    root: str | Path,
    num_items: int = 40,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    kinds: tuple[str, ...] = KINDS,
    speed: tuple[float, float] | None = None,
    background: str = "plain",
    fps: float = 30,
    codec: str = "vp9",
) -> dict[str, Path]:
    """Write ``num_items`` quadruplets of every kind in ``kinds`` under ``root`` and their lists.

    Layout: ``root/<kind>/<kind>_<item>_<a1b1|a2b2|a1b2|a2b1>.webm``; ``root/physics_<kind>_quads.txt``
    (per line: possible, possible, impossible, impossible) and ``root/physics_<pair kind>_pairs.txt``
    (per line: possible, impossible; pair kinds in :data:`PAIR_KINDS`, ``vanish`` and ``appear``
    from ``permanence``), paths relative to ``root``; ``root/physics.json``: the settings and
    what each item drew. Deterministic given ``seed``; see :func:`render_quad` for the rest.
    Returns ``{"<kind>_quads" | "<pair kind>_pairs" | "labels": path}``.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds!r}")
    if num_items < 1:
        raise ValueError(f"num_items must be positive, got {num_items}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {sorted(_CODECS)}, got {codec!r}")
    root = Path(root)
    speed = pixel_speed(size, 32, 4) if speed is None else tuple(speed)
    result: dict[str, Path] = {}
    items: dict[str, list] = {}
    for kind in kinds:
        quads, pairs = [], {"vanish": [], "appear": []} if kind == "permanence" else {kind: []}
        items[kind] = []
        for i in range(num_items):
            quad = render_quad(kind, np.random.default_rng([seed, KINDS.index(kind), i]), frames, size, speed, background)
            names = []
            for name, clip in zip(QUAD_NAMES, quad.clips):
                path = write_video(root / kind / f"{kind}_{i:04d}_{name}{_DEFAULT_SUFFIX[codec]}", clip, fps, codec)
                names.append(path.relative_to(root).as_posix())
            quads.append(names)
            items[kind].append({"videos": names, **quad.info})
            p1, p2, i1, i2 = names
            if kind == "permanence":
                pairs["vanish"].append((p1, i1))
                pairs["appear"].append((p2, i2))
            else:
                pairs[kind].append((p1, i1) if i % 2 == 0 else (p2, i2))
        result[f"{kind}_quads"] = _write_list(root / f"physics_{kind}_quads.txt", quads)
        for pair_kind, rows in pairs.items():
            result[f"{pair_kind}_pairs"] = _write_list(root / f"physics_{pair_kind}_pairs.txt", rows)
    meta = {
        "kinds": list(kinds), "quad_order": "possible possible impossible impossible (a1b1 a2b2 a1b2 a2b1)",
        "num_items": num_items, "frames": frames, "size": size, "seed": seed, "speed_px_per_frame": list(speed),
        "background": background, "fps": fps, "codec": codec, "items": items,
    }  # fmt: skip
    labels = root / "physics.json"
    labels.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    result["labels"] = labels
    return result


def _write_list(path: Path, rows) -> Path:
    path.write_text("".join(" ".join(row) + "\n" for row in rows), encoding="utf-8")
    return path

