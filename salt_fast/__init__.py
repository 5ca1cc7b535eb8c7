"""salt_fast: fast SALT (static-teacher asymmetric latent training) for video ViTs."""

import torch as _torch  # noqa: F401  # loads libc10 & co. before salt_fast._C is imported

__version__ = "0.1.0"
