"""salt_fast.kernels: standalone ops for JEPA-style video models.

Each module holds a plain PyTorch reference (runs anywhere) and documents shapes and
dtypes. Nothing here imports from the rest of salt_fast, so the package can be lifted
into other codebases: ``from salt_fast.kernels import rope3d``.
"""

from . import latent_loss, masked_tokens, rope3d
from .latent_loss import latent_l1_loss
from .masked_tokens import gather_tokens
from .rope3d import apply_rope3d, rope3d_cos_sin, rope3d_rotate

__all__ = [
    "apply_rope3d",
    "gather_tokens",
    "latent_l1_loss",
    "latent_loss",
    "masked_tokens",
    "rope3d",
    "rope3d_cos_sin",
    "rope3d_rotate",
]
