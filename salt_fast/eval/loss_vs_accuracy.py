"""Does the student's training loss predict probe accuracy? (the paper's Figure 3, for your run)

For every checkpoint of a run: the training loss around that step (from the run's
``metrics.csv``, averaged over the logged steps since the previous checkpoint) beside the
fast-protocol probe top-1 of that checkpoint's encoder, the least-squares line through them
and its R^2, and a plot.

    python -m salt_fast.eval.loss_vs_accuracy --run runs/salt --train-list train.txt --val-list val.txt
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from salt_fast import checkpoint as ckpt
from salt_fast.cli import HelpFormatter, one_line_errors
from salt_fast.metrics import write_result

from .encoders import load_run_models
from .probe import PROTOCOLS, ProbeConfig, run_probe

__all__ = ["checkpoint_losses", "linear_fit", "loss_vs_accuracy", "plot_loss_vs_accuracy"]


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares ``y = slope * x + intercept`` and its ``r2`` (1 - SS_res / SS_tot)."""
    n = len(x)
    if n != len(y) or n < 2:
        raise ValueError(f"need two equally long sequences of at least 2 points, got {len(x)} and {len(y)}")
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        raise ValueError("all x values are equal: no line to fit")
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx
    intercept = my - slope * mx
    ss_res = sum((b - (slope * a + intercept)) ** 2 for a, b in zip(x, y))
    ss_tot = sum((b - my) ** 2 for b in y)
    return {"slope": slope, "intercept": intercept, "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def checkpoint_losses(metrics_csv: str | Path, steps: Sequence[int]) -> dict[int, float]:
    """Mean logged ``loss`` over ``(previous checkpoint step, step]`` for each checkpoint step."""
    path = Path(metrics_csv)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    with path.open(encoding="utf-8") as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r.get("loss")]
    out, previous = {}, 0
    for step in sorted(steps):
        window = [loss for s, loss in rows if previous < s <= step]
        if not window:
            raise ValueError(f"{path} has no logged loss between steps {previous} and {step}")
        out[step] = sum(window) / len(window)
        previous = step
    return out


def plot_loss_vs_accuracy(points: list[dict], fit: dict, path: str | Path, title: str = "") -> Path | None:
    """Scatter of (loss, top-1) with the fitted line; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    x = [p["loss"] for p in points]
    y = [p["top1"] for p in points]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(x, y)
    for p in points:
        ax.annotate(str(p["step"]), (p["loss"], p["top1"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lo, hi = min(x), max(x)
    ax.plot([lo, hi], [fit["slope"] * lo + fit["intercept"], fit["slope"] * hi + fit["intercept"]], "--")
    ax.set_xlabel("training loss")
    ax.set_ylabel("probe top-1 (%)")
    ax.set_title(f"{title} R$^2$ = {fit['r2']:.3f}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def loss_vs_accuracy(
    run: str | Path,
    train_list,
    val_list,
    cfg: ProbeConfig = PROTOCOLS["fast"],
    device=None,
    plot: str | Path | None = None,
    show_progress: bool = True,
) -> dict:
    """Probe every checkpoint of ``run`` (a run directory) and relate its loss to its top-1.

    Returns ``{"points": [{"step", "loss", "top1", "checkpoint"}], "fit": {"slope",
    "intercept", "r2"}, "plot"}``.
    """
    run = Path(run)
    checkpoints = ckpt.list_checkpoints(run / "checkpoints")[::-1]  # oldest first
    if len(checkpoints) < 2:
        raise ValueError(f"{run / 'checkpoints'} holds {len(checkpoints)} checkpoint(s); a fit needs at least 2")
    # Losses first: a metrics problem shows before any probe runs. Models one at a time: only
    # one checkpoint's weights are in memory at once.
    losses = checkpoint_losses(run / "metrics.csv", [ckpt.checkpoint_step(p) for p in checkpoints])
    points = []
    for path in checkpoints:
        m = load_run_models(path)
        probe = run_probe(m.encoder, train_list, val_list, cfg, device, show_progress=show_progress)
        points.append({"step": m.step, "loss": losses[m.step], "top1": probe["top1"], "checkpoint": str(m.path)})
        del m
    fit = linear_fit([p["loss"] for p in points], [p["top1"] for p in points])
    written = plot_loss_vs_accuracy(points, fit, plot, title=run.name) if plot else None
    return {"points": points, "fit": fit, "plot": str(written) if written else None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m salt_fast.eval.loss_vs_accuracy", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--run", required=True, help="run directory (holds checkpoints/ and metrics.csv)")
    parser.add_argument("--train-list", required=True, help="probe training videos: 'path label' lines")
    parser.add_argument("--val-list", required=True, help="probe validation videos: 'path label' lines")
    fast = PROTOCOLS["fast"]
    parser.add_argument("--frames", type=int, default=fast.frames, help="frames per clip of the fast-protocol probe")
    parser.add_argument("--resolution", type=int, default=fast.resolution, help="clip side in pixels of the probe")
    parser.add_argument("--epochs", type=int, default=fast.epochs, help="probe training epochs per checkpoint")
    parser.add_argument("--out", default=None, help="results JSON (default: RUN/loss_vs_accuracy.json); the plot goes beside it")
    return parser


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = ProbeConfig.protocol("fast", frames=args.frames, resolution=args.resolution, epochs=args.epochs)
    out = Path(args.out) if args.out else Path(args.run) / "loss_vs_accuracy.json"
    result = loss_vs_accuracy(args.run, args.train_list, args.val_list, cfg, plot=out.with_suffix(".png"))
    write_result(out, result)
    for p in result["points"]:
        print(f"step {p['step']:>7}  loss {p['loss']:.4f}  top-1 {p['top1']:.2f}%")
    print(f"R^2 = {result['fit']['r2']:.3f} -> {out}")
    return result


if __name__ == "__main__":
    main()
