"""salt_fast.kernels: standalone ops for JEPA-style video models.

Every op has a plain PyTorch reference in its own file and a Triton kernel for CUDA tensors,
chosen per call (``SALT_FAST_KERNELS=auto|triton|reference``; see ``_dispatch.py``).
Nothing here imports from the rest of salt_fast, so the package can be lifted into other
codebases: ``from salt_fast.kernels import rope3d``.
"""

from . import latent_loss, masked_tokens, pixel_loss, rope3d
from ._dispatch import use_triton
from .latent_loss import latent_l1_loss
from .masked_tokens import assemble_predictor_input, gather_tokens
from .pixel_loss import pixel_mse_loss
from .rope3d import apply_rope3d, rope3d_cos_sin, rope3d_qkv_, rope3d_rotate

__all__ = [
    "apply_rope3d",
    "assemble_predictor_input",
    "gather_tokens",
    "latent_l1_loss",
    "latent_loss",
    "masked_tokens",
    "pixel_loss",
    "pixel_mse_loss",
    "rope3d",
    "rope3d_cos_sin",
    "rope3d_qkv_",
    "rope3d_rotate",
    "use_triton",
]
