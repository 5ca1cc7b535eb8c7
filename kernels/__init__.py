"""salt_fast.kernels: standalone ops for JEPA-style video models.

Every op has a plain PyTorch reference in its own file and a Triton kernel for CUDA tensors,
chosen per call (``SALT_FAST_KERNELS``, one of ``KERNEL_CHOICES``: ``auto|triton|reference``;
see ``_dispatch.py``). Nothing here imports from the rest of salt_fast, so the package can be
lifted into other codebases: ``from salt_fast.kernels import rope3d``. ``vjepa2_ops.py`` holds
drop-in replacements for V-JEPA 2's ``apply_masks``, RoPE q/k rotation and latent loss.

The Triton path of each op is a registered PyTorch custom op (``torch.ops.salt_fast.*``, see
``_ops``): opaque to ``torch.compile``, a fake (meta) implementation, so that a whole training
step traces on the meta device with ``SALT_FAST_KERNELS=triton``, and its cost declared in
``OP_COSTS`` (``name -> cost(*args, **kwargs) -> (flops, bytes read + written)``, keyed like
``str(op._overloadpacket)``, e.g. ``"salt_fast.latent_l1_loss"``).

Ops that take token ids check their range on the device without a host sync
(``check_ids=True``, the default; ``False`` skips it). ``SALT_FAST_DEBUG=1`` makes the id
checks synchronous and adds the uniqueness check where a backward relies on it.

Private modules: ``_dispatch`` (the switch, optional Triton), ``_launch`` (launch helpers),
``_checks`` (argument checks), ``_fused_loss`` (the losses' deterministic mean), ``_ops`` (the
custom-op registration).
"""

from . import latent_loss, masked_tokens, pixel_loss, rope3d, vjepa2_ops
from ._dispatch import CHOICES as KERNEL_CHOICES
from ._dispatch import use_triton
from ._ops import OP_COSTS
from .latent_loss import latent_l1_loss
from .masked_tokens import assemble_predictor_input, gather_tokens
from .pixel_loss import pixel_mse_loss
from .rope3d import apply_rope3d, rope3d_cos_sin, rope3d_qkv_, rope3d_rotate
from .vjepa2_ops import apply_masks, jepa_latent_loss, rotate_qk, rotate_qkv_

__all__ = [
    "KERNEL_CHOICES",
    "OP_COSTS",
    "apply_masks",
    "apply_rope3d",
    "assemble_predictor_input",
    "gather_tokens",
    "jepa_latent_loss",
    "latent_l1_loss",
    "latent_loss",
    "masked_tokens",
    "pixel_loss",
    "pixel_mse_loss",
    "rope3d",
    "rope3d_cos_sin",
    "rope3d_qkv_",
    "rope3d_rotate",
    "rotate_qk",
    "rotate_qkv_",
    "use_triton",
    "vjepa2_ops",
]
