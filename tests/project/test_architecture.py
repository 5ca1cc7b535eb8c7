"""The shape of the code: stages are objects, each closed set of choices has one home, the
training runtime is a library, and the kernels stand alone. Plus: a new stage is one class."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from salt_fast import config as C
from salt_fast.data import DECODERS
from salt_fast.kernels import KERNEL_CHOICES
from salt_fast.kernels.rope3d import MODES
from salt_fast.masking import MASK_SETS, TRUNCATION_POLICIES
from salt_fast.models.vit import ATTENTION_BACKENDS
from salt_fast.runtime import COMPILE_MODES, DISTRIBUTED, PRECISIONS
from salt_fast.stages import STAGES, SaltStage
from support import ROOT, TINY_SHAPE, tiny

SOURCES = [p for d in ("salt_fast", "benchmarks", "kernels") for p in (ROOT / d).rglob("*.py")]


def test_no_stage_name_is_tested_outside_the_stage_registry():
    names = "|".join(STAGES)
    pattern = re.compile(rf"stage\w*\s*(==|!=)\s*['\"]|['\"]({names})['\"]\s*(==|!=|in\b)|\.name\s*==\s*['\"]({names})")
    offenders = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in SOURCES
        if p.name != "stages.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_config_choices_are_read_from_the_modules_that_own_them():
    owners = {
        ("TrainConfig", "stage"): STAGES,
        ("ModelConfig", "rope_mode"): MODES,
        ("ModelConfig", "attn_backend"): ATTENTION_BACKENDS,
        ("DataConfig", "decoder"): DECODERS,
        ("MaskingConfig", "configs"): MASK_SETS,
        ("MaskingConfig", "truncation"): TRUNCATION_POLICIES,
        ("RuntimeConfig", "precision"): PRECISIONS,
        ("RuntimeConfig", "distributed"): DISTRIBUTED,
        ("RuntimeConfig", "compile_mode"): COMPILE_MODES,
        ("RuntimeConfig", "kernels"): KERNEL_CHOICES,
    }
    found = {
        (cls.__name__, f.name): f.metadata["choices"]
        for cls in (C.TrainConfig, C.ModelConfig, C.DataConfig, C.MaskingConfig, C.RuntimeConfig)
        for f in dataclasses.fields(cls)
        if f.metadata.get("choices")
    }
    assert found.keys() == owners.keys()
    for key, owner in owners.items():
        assert found[key] is owner, key  # the owner's object itself, not a copy


def _imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_only_entry_points_import_the_training_script():
    # The runtime is the library; train.py is main + the loop. The quickstart and the small
    # reproduction run whole trainings, through train(), the public entry point.
    allowed = {"salt_fast/quickstart.py", "benchmarks/reproduce_small.py"}
    offenders = []
    for p in SOURCES:
        for node in _imports(p):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names]
            if module == "salt_fast.train" or "salt_fast.train" in names:
                if str(p.relative_to(ROOT)) not in allowed:
                    offenders.append(str(p.relative_to(ROOT)))
    assert not offenders


def test_kernel_files_share_private_helpers_only_through_private_modules():
    offenders = []
    for p in (ROOT / "kernels").glob("*.py"):
        for node in _imports(p):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module and not node.module.startswith("_"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    offenders.append(f"{p.name}: from .{node.module} import {', '.join(private)}")
    assert not offenders, offenders


class SaltL2Stage(SaltStage):
    """A stage written by a user: SALT with an L2 latent loss. One class, one registry entry."""

    name = "salt_l2"
    summary = "SALT with an L2 loss"

    def loss(self, encoder, head, clips, masks, grid, teacher_out, check_ids=True):
        losses = []
        for index, m in enumerate(masks):
            context = encoder(clips, m.context, m.context_valid)
            pred = head(context, m.context, m.target, grid, index, m.context_valid, m.target_valid)
            rows = torch.gather(teacher_out, 1, m.target.unsqueeze(-1).expand(-1, -1, teacher_out.shape[-1]))
            target = torch.nn.functional.layer_norm(rows, rows.shape[-1:])
            losses.append((pred - target).pow(2).mean())
        return torch.stack(losses).mean(), losses


def test_a_new_stage_is_one_class_and_a_registry_entry(monkeypatch, tmp_path):
    from salt_fast import checkpoint as ckpt
    from salt_fast.models import build_encoder
    from salt_fast.train import train

    monkeypatch.setitem(STAGES, "salt_l2", SaltL2Stage())
    teacher = tmp_path / "teacher.safetensors"
    ckpt.export_encoder(build_encoder("vit_tiny", **TINY_SHAPE), teacher)
    cfg = C.load_config(None, tiny(tmp_path / "run", tmp_path / "synthetic", "salt_l2",
                                   **{"model.teacher_checkpoint": str(teacher), "optim.steps": 2}))  # fmt: skip
    summary = train(cfg)
    assert summary["stage"] == "salt_l2" and torch.isfinite(torch.tensor(summary["last_loss"]))
    with pytest.raises(C.ConfigError, match="stage: expected one of"):
        C.load_config(None, ["stage=salt_l3"])
