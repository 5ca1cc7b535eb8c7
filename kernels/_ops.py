"""The Triton path of every op as a registered PyTorch custom op (``torch.library``, namespace ``salt_fast``).

PyTorch then sees each op as one operator with a declared behaviour, not as Python code that
launches kernels:

* ``torch.compile`` keeps the op opaque in its graph (no graph break; the fake implementation
  gives the output shapes). The id checks (``_checks.validate_ids``) stay in the public Python
  wrappers, outside the ops, so they are in the compiled graph too.
* On the meta device the fake implementation runs (``use_triton`` answers True for meta tensors
  under ``SALT_FAST_KERNELS=triton``), so a whole training step traces with the Triton path:
  ``with torch.device("meta")`` and no Triton needed. Within ``_dispatch.launch_on_meta()`` the
  real implementation runs on meta tensors instead (for tools that record the launches).
* A ``TorchDispatchMode`` sees ``salt_fast.<op>`` with its arguments, and ``OP_COSTS`` declares
  what the op costs: ``OP_COSTS[str(op._overloadpacket)](*args, **kwargs) -> (flops, bytes)``,
  the arithmetic of its kernels (one FLOP per elementwise operation; the ops have no matmul) and
  the bytes their loads and stores move (read + written), computed from shapes and dtypes with the
  GPU's launch choices.

Each op file defines, side by side, an op's implementation (its Triton launcher: CUDA tensors, or
CPU ones through Triton's interpreter), its fake implementation (outputs of the right shape,
dtype and strides; no data touched) and its cost, and registers them with :func:`define`.
Autograd is ``register_autograd`` on the op, reproducing the former autograd Functions exactly;
backward passes that launch kernels are ops of their own. The exception is the in-place
``rope3d_qkv_``: PyTorch registers no autograd formula for a mutating op, so an
``autograd.Function`` (which compile traces) wraps it.

Needs only torch (``torch.library.custom_op``, torch >= 2.4): the ops are registered whether or
not Triton is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from . import _dispatch

NAMESPACE = "salt_fast"

Cost = Callable[..., tuple[int, int]]


class Registered(NamedTuple):
    """One custom op: the op, and the functions registered for it."""

    op: torch.library.CustomOpDef
    impl: Callable  # the real implementation (launches the kernels)
    fake: Callable  # shapes only
    cost: Cost  # (flops, bytes read + written)


REGISTERED: dict[str, Registered] = {}  # by packet name, "salt_fast.<name>"
OP_COSTS: dict[str, Cost] = {}  # the same keys: each op's cost


def define(
    name: str, schema: str, impl: Callable, *, fake: Callable, cost: Cost, mutates_args=()
) -> torch.library.CustomOpDef:
    """Register ``impl`` as the custom op ``salt_fast::<name>`` (``schema``: its argument and return
    types, e.g. ``"(Tensor x, Tensor ids) -> Tensor"``) with its fake implementation and its cost.

    On meta tensors the fake implementation runs, or ``impl`` within ``_dispatch.launch_on_meta()``.
    Returns the op (``torch.ops.salt_fast.<name>`` calls it; ``register_autograd`` on it).
    """

    def launch(*args, **kwargs):
        # (under torch.compile, use_triton could not switch the kernels to the interpreter while tracing)
        _dispatch.prepare_launch(*(a for a in args if isinstance(a, torch.Tensor)))
        return impl(*args, **kwargs)

    op = torch.library.custom_op(f"{NAMESPACE}::{name}", launch, mutates_args=mutates_args, schema=schema)

    def fake_or_launch(*args, **kwargs):
        if _dispatch.launching_on_meta():
            return impl(*args, **kwargs)
        return fake(*args, **kwargs)

    op.register_fake(fake_or_launch)
    key = f"{NAMESPACE}.{name}"
    REGISTERED[key] = Registered(op, impl, fake, cost)
    OP_COSTS[key] = cost
    return op


def nbytes(t: torch.Tensor | None) -> int:
    """Bytes of ``t``'s elements (0 for None)."""
    return 0 if t is None else t.numel() * t.element_size()
