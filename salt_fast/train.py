"""SALT training: Stage 1 (``pixel``), Stage 2 (``salt``) and the V-JEPA 2 baseline (``vjepa``).

    torchrun --nproc_per_node=N salt_fast/train.py --config configs/salt_vit_l.yaml optim.steps=1000
    python -m salt_fast.train --config configs/quickstart_pixel.yaml          # one process

One step: the loader's batch (clips, masks for this step) -> [salt/vjepa: the frozen teacher
on all tokens, no grad] -> the loss of every mask configuration -> backward -> global-norm
clip -> AdamW with the step's lr and weight decay -> [vjepa: EMA teacher update]. Every
``checkpoint.every`` steps an atomic checkpoint; at the end the encoder is exported as
safetensors (the next stage's teacher). What a stage does is in ``salt_fast.stages``; the
runtime (processes, models, batches, the step) in ``salt_fast.runtime``; saving and resuming
in ``salt_fast.checkpoint``.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

import torch.distributed as dist

from salt_fast import checkpoint as ckpt
from salt_fast.cli import one_line_errors
from salt_fast.config import TrainConfig, check_run_inputs, load_config, save_config
from salt_fast.flops import peak_flops, step_flops
from salt_fast.metrics import LogWindow, MetricsLogger, ProgressBar, peak_memory_mb, plot_metrics
from salt_fast.runtime import (
    NonFiniteWatch,
    Run,
    Runtime,
    StepResult,
    barrier,
    build_batches,
    build_run,
    lock_output_dir,
    masks_to,
    mean_across,
    setup_runtime,
    train_step,
)


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a training run; returns a summary dict.

    Its inputs are checked before anything is written (ConfigError); one run at a time holds
    ``output_dir`` (OutputDirInUse); a non-finite step stops the run unapplied (NonFiniteLoss).
    """
    check_run_inputs(cfg)
    rt = setup_runtime(cfg.runtime)
    with lock_output_dir(cfg.output_dir) if rt.rank == 0 else nullcontext():
        summary = _train(cfg, rt, Path(cfg.output_dir))
    barrier(rt)
    if rt.world_size > 1:
        dist.destroy_process_group()
    return summary


def _train(cfg: TrainConfig, rt: Runtime, out: Path) -> dict:
    """The run itself, inside its output_dir's lock."""
    if rt.rank == 0:
        save_config(cfg, out / "config.yaml")
    run = build_run(cfg, rt)
    start_step = ckpt.restore_training_state(run)
    if start_step >= cfg.optim.steps and rt.rank == 0:
        print(f"{out}: already finished at step {start_step}; nothing to do")
    batches = build_batches(cfg, rt, run.grid, start_step) if start_step < cfg.optim.steps else iter(())
    logger = MetricsLogger(out, rank=rt.rank, tensorboard=cfg.log.tensorboard, resume_step=start_step)
    progress = ProgressBar(cfg.optim.steps, initial=start_step, enabled=cfg.log.progress and rt.rank == 0)
    window, peak, watch, losses = LogWindow(), peak_flops(rt.device), NonFiniteWatch(rt.device), []

    for step in range(start_step, cfg.optim.steps):  # syncs with the host only to log and to save
        with window.waiting():
            batch = next(batches)
        masks = masks_to(batch.masks, rt.device)
        result = train_step(run, batch.clips.to(rt.device, non_blocking=True), masks, step)
        watch.update(result, step)
        window.add(batch.clips.shape[0] * rt.world_size, step_flops(run.learner.encoder, run.learner.head, masks,
                                                                     run.tokens_per_clip, run.teacher))  # fmt: skip
        done = step + 1
        last = done == cfg.optim.steps
        log, save = last or done % cfg.log.every == 0, last or done % cfg.checkpoint.every == 0
        if log or save:
            watch.check(out)
        if log:
            losses.append(mean_across(result.loss, rt))
            logger.log(done, **log_row(run, result, losses[-1], window.rates(peak), len(batch.skipped)))
            window.reset()
        progress.update(1, **({"loss": f"{losses[-1]:.4f}"} if log else {}))
        if save:
            ckpt.save_training_state(run, done)
    progress.close()
    logger.close()

    summary = {"stage": cfg.stage, "steps": cfg.optim.steps, "steps_run": len(losses), "output_dir": str(out)}
    encoder = ckpt.export_run_encoder(run, out / "encoder.safetensors")
    if rt.rank == 0:
        plot = plot_metrics(out / "metrics.csv", out / "loss.png")
        summary.update(encoder=str(encoder), checkpoints=str(out / "checkpoints"), metrics=str(out / "metrics.csv"),
                       plot=str(plot) if plot else None)  # fmt: skip
        if losses:
            summary.update(first_loss=losses[0], last_loss=losses[-1])
    return summary


def log_row(run: Run, result: StepResult, loss: float, rates: dict, skipped: int) -> dict:
    """One metrics.csv row: losses (mean over processes), schedule, grad norm, speed, memory."""
    return {
        "loss": loss,
        **{f"loss_mask{i}": mean_across(v, run.rt) for i, v in enumerate(result.per_config)},
        "lr": result.schedule["lr"],
        "weight_decay": result.schedule["wd"],
        "grad_norm": float(result.grad_norm),
        **rates,  # clips/s, TFLOP/s of this process (exact count), MFU against the dense bf16 peak, data wait
        "skipped_files": skipped,
        "peak_memory_mb": peak_memory_mb(run.rt.device) or 0.0,
    }


def describe(summary: dict) -> str:
    """What a run did and where its outputs are, for people (rank 0's summary)."""
    if "last_loss" not in summary:
        done = "already finished; nothing to do"
    else:
        resumed = summary["steps_run"] < summary["steps"]
        done = f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}" + (
            f" over the last {summary['steps_run']} (resumed)" if resumed else "")  # fmt: skip
    return (
        f"{summary['stage']}: {summary['steps']} steps, {done}\n  encoder     {summary['encoder']}\n"
        f"  checkpoints {summary['checkpoints']}\n  metrics     {summary['metrics']}\n  plot        {summary['plot']}"
    )


@one_line_errors()
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Every key, its default and meaning: python -m salt_fast.config --describe"
    )
    parser.add_argument("--config", help="YAML recipe (configs/*.yaml) (default: none, the paper's recipe)")
    parser.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides, e.g. optim.steps=100 (default: none)")
    args = parser.parse_args(argv)
    summary = train(load_config(args.config, args.overrides))
    if "encoder" in summary:
        print("\n" + describe(summary))
    return summary


if __name__ == "__main__":
    main()
