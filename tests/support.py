"""What several test areas share: the repository root and a tiny, fast training config."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY_SHAPE = {"depth": 1, "embed_dim": 48, "num_heads": 2, "mlp_hidden": 96}


def tiny(out, synthetic, stage="pixel", **extra):
    overrides = {
        "stage": stage,
        "output_dir": str(out),
        "model.encoder": "vit_tiny",
        "model.teacher": "vit_tiny",
        "model.encoder_overrides": TINY_SHAPE,
        "model.teacher_overrides": TINY_SHAPE,
        "model.predictor_overrides": {"embed_dim": 48, "depth": 1, "num_heads": 2, "mlp_hidden": 96},
        "data.frames": 4,
        "data.resolution": 32,
        "data.batch_size": 2,
        "data.num_workers": 0,
        "data.synthetic_videos": 8,
        "data.synthetic_dir": str(synthetic),
        "optim.steps": 6,
        "optim.warmup_steps": 2,
        "optim.lr_peak": 1e-3,
        "optim.grad_clip": 1.0,
        "checkpoint.every": 2,
        "log.every": 1,
        "log.tensorboard": False,
        "log.progress": False,
        **extra,
    }
    return [f"{k}={v}" for k, v in overrides.items()]
