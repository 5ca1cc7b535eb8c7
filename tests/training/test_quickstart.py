"""The quickstart's main job runs both stages end to end (at toy size here)."""

import math

from salt_fast import quickstart


def test_quickstart_runs_both_stages(tmp_path, capsys):
    shape = "{depth: 1, embed_dim: 48, num_heads: 2, mlp_hidden: 96}"
    toy = [
        f"output_dir={tmp_path}/run",
        f"data.synthetic_dir={tmp_path}/synthetic",
        "data.synthetic_videos=8",
        "data.frames=4",
        "data.resolution=32",
        "data.batch_size=2",
        "data.num_workers=0",
        "optim.steps=4",
        "optim.warmup_steps=1",
        f"model.encoder_overrides={shape}",
        f"model.teacher_overrides={shape}",
        "log.tensorboard=false",
        "log.progress=false",
    ]
    teacher, student = quickstart.main(toy)
    assert student["stage"] == "salt" and math.isfinite(student["last_loss"])
    out = capsys.readouterr().out
    assert "Stage 1 teacher" in out and "Stage 2 student" in out and "checkpoints" in out

    # Run again: both stages are done; it says so instead of printing losses of no steps.
    teacher, student = quickstart.main(toy)
    out = capsys.readouterr().out
    assert out.count("already finished at step 4; nothing to do") == 2 and "nan" not in out.lower()
    assert student["steps_run"] == 0 and "last_loss" not in student
