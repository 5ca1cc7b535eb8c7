"""torch.compile(fullgraph=True) traces a training step's loss and backward with no graph break,
on the reference path and on the Triton path (salt_fast's custom ops, opaque in the graph: their
fake implementations give the shapes while tracing; on CPU the kernels then run in Triton's
interpreter). The aot_eager backend (AOTAutograd, no code generation) keeps it fast; the compiled
step must give the eager step's loss and gradients."""

import pytest
import torch

from salt_fast.config import load_config
from salt_fast.masking import MaskSampler
from salt_fast.runtime import Runtime, build_run
from support import tiny

pytest.importorskip("triton")


def salt_fast_ops(graphs) -> set[str]:
    """The salt_fast custom ops called in dynamo's graphs (and their subgraphs: autograd.Functions)."""
    modules = [m for g in graphs for m in g.modules() if isinstance(m, torch.fx.GraphModule)]
    return {str(n.target) for m in modules for n in m.graph.nodes if str(n.target).startswith("salt_fast.")}


@pytest.mark.parametrize(
    ("stage", "kernels", "truncation"),
    [("salt", "reference", "pad"), ("salt", "triton", "pad"), ("pixel", "triton", "min")],
)
def test_training_step_compiles_without_graph_breaks(tmp_path, monkeypatch, stage, kernels, truncation):
    monkeypatch.setenv("SALT_FAST_KERNELS", kernels)
    cfg = load_config(None, tiny(tmp_path, tmp_path, stage, **{"runtime.kernels": kernels}))
    run = build_run(cfg, Runtime(0, 1, torch.device("cpu"), bf16=False), load_teacher=False)
    clips = torch.randn(2, 3, 4, 32, 32)
    masks = MaskSampler(run.grid, seed=0, truncation=truncation).sample(2, 0)
    with torch.no_grad():
        teacher_out = run.teacher(clips) if run.teacher is not None else None
    params = [p for p in run.learner.parameters() if p.requires_grad]

    def step(model, check_ids):
        loss, _ = model(clips, masks, run.grid, teacher_out, check_ids=check_ids)
        return loss.detach(), torch.autograd.grad(loss, params)

    for check_ids in (False, True):  # the id checks (torch._assert_async) are in the graph too
        torch._dynamo.reset()
        explained = torch._dynamo.explain(run.model)(clips, masks, run.grid, teacher_out, check_ids=check_ids)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
        ops = salt_fast_ops(explained.graphs)
        if kernels == "reference":
            assert not ops
        else:
            loss_op = "salt_fast.latent_l1_loss" if stage == "salt" else "salt_fast.pixel_mse_loss"
            expected = {"salt_fast.gather_tokens", "salt_fast.assemble_predictor_input", "salt_fast.rope3d_qkv_", loss_op}
            assert expected <= ops, ops

        torch._dynamo.reset()
        compiled = torch.compile(run.model, fullgraph=True, backend="aot_eager")
        loss, grads = step(compiled, check_ids)
        expected_loss, expected_grads = step(run.model, check_ids)
        torch.testing.assert_close(loss, expected_loss)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e)
    torch._dynamo.reset()
