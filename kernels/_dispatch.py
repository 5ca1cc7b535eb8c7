"""Which implementation an op runs, and Triton as an optional import.

* ``SALT_FAST_KERNELS=auto`` (default): Triton kernels for CUDA tensors, the PyTorch
  reference otherwise (CPU tensors, or Triton not installed).
* ``SALT_FAST_KERNELS=reference``: always the reference.
* ``SALT_FAST_KERNELS=triton``: always the kernels; on CPU tensors they run in Triton's
  interpreter, and on meta tensors the ops' fake implementations run (shapes only: a whole
  training step traces on the meta device; see ``_ops``), which need no Triton. Triton
  decides at decoration time whether a kernel is interpreted (``TRITON_INTERPRET=1``). On a
  machine without CUDA this module sets that variable when it is first imported with
  ``SALT_FAST_KERNELS=triton``; when the choice comes later (a config that sets the variable
  after the import), the first op asked to run Triton on CPU tensors re-decorates every
  kernel under the interpreter (``_interpret_kernels``; under ``torch.compile``, when the
  compiled op first runs), so the setting alone is enough either way.

``launch_on_meta()`` is for tools that record kernel launches instead of running them
(benchmarks/aot.py): within it, meta tensors run the ops' real implementations.

Kernel modules write ``from __future__ import annotations`` (so ``BLOCK: tl.constexpr``
is never evaluated) and decorate with ``jit``, so they import on CPU-only installs where
Triton is absent (CPU torch wheels do not ship it).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CHOICES = ("auto", "triton", "reference")

if os.environ.get("SALT_FAST_KERNELS") == "triton" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only install: every op runs its reference
    triton = tl = None

# True when the kernels run in Triton's interpreter: decorated under TRITON_INTERPRET=1, or
# switched by ``_interpret_kernels``. Read it at call time (``_dispatch.INTERPRETED``): some
# wrappers pick bigger tiles under the interpreter, where each program costs ~1 ms.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

_KERNELS: list = []  # every function decorated by ``jit`` (JITFunction or InterpretedFunction)
_SWITCH_LOCK = threading.Lock()


def jit(fn):
    """``triton.jit`` when Triton is installed; without it the kernel is defined but never launched."""
    if triton is None:
        return fn
    kernel = triton.jit(fn)
    _KERNELS.append(kernel)
    return kernel


def _compiled_kernels() -> bool:
    """True while the kernels are compiled ones (``JITFunction``), not interpreted."""
    return triton is not None and any(isinstance(k, triton.runtime.JITFunction) for k in _KERNELS)


def _interpret_kernels() -> None:
    """Switch every compiled kernel to Triton's interpreter, as if ``TRITON_INTERPRET=1`` had been
    set before anything was imported (CUDA-less machines only: see ``use_triton``).

    Triton's interpreter needs interpreted versions of the ``@jit`` functions the kernels call:
    their own helpers (called by global name) and Triton's (``tl.sum``, ``tl.zeros``, ... in
    ``triton.language``, also bound as ``tl.tensor`` methods), which Triton decorated when it was
    imported. So each ``JITFunction`` found in this package's modules or in ``triton.language.*``
    is re-decorated under ``TRITON_INTERPRET=1`` and rebound wherever it is named; the variable
    stays set, so that kernels defined later are interpreted too.
    """
    global INTERPRETED
    with _SWITCH_LOCK:
        if not _compiled_kernels():
            return
        os.environ["TRITON_INTERPRET"] = "1"  # triton.jit reads it at decoration time
        compiled = triton.runtime.JITFunction
        package = __name__.rpartition(".")[0]
        modules = [
            module
            for name, module in list(sys.modules.items())
            if module is not None
            and (name == package or name.startswith((package + ".", "triton.language")))
        ]
        swap = {}
        for module in modules:
            for attr, value in list(vars(module).items()):
                if isinstance(value, compiled):
                    if id(value) not in swap:
                        swap[id(value)] = triton.jit(value.fn)
                    setattr(module, attr, swap[id(value)])
        _KERNELS[:] = [swap.get(id(k), k) for k in _KERNELS]
        for attr, value in list(vars(tl.tensor).items()):  # ``x.sum()``: a plain function binds ``self``
            if isinstance(value, compiled):
                interpreted = swap.get(id(value)) or triton.jit(value.fn)
                setattr(tl.tensor, attr, lambda *args, _fn=interpreted, **kwargs: _fn(*args, **kwargs))
        INTERPRETED = True


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when an op on ``tensors`` should take its Triton path, the custom op (see the module
    docstring): launch its kernels, or, on meta tensors, run its fake implementation."""
    choice = os.environ.get("SALT_FAST_KERNELS", "auto")
    if choice not in CHOICES:
        raise ValueError(f"SALT_FAST_KERNELS={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "reference":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if choice == "auto":
        return triton is not None and on_cuda
    if tensors and all(t.is_meta for t in tensors):  # shapes only: the fake implementations, nothing to interpret
        return True
    if triton is None:
        raise RuntimeError("SALT_FAST_KERNELS=triton, but Triton is not installed (pip install triton)")
    if not torch.compiler.is_compiling():  # compiled code switches when the op runs (``_ops``)
        prepare_launch(*tensors)
    return True


def prepare_launch(*tensors: torch.Tensor) -> None:
    """Before kernels launch on ``tensors``: CPU tensors need Triton's interpreter, so compiled
    kernels are switched to it (``_interpret_kernels``), on a machine without CUDA only."""
    if any(t.device.type == "cpu" for t in tensors) and _compiled_kernels():
        if torch.cuda.is_available():  # switching would run every later CUDA launch in the interpreter too
            raise RuntimeError(
                "SALT_FAST_KERNELS=triton on CPU tensors on a CUDA machine needs Triton's interpreter: "
                "set TRITON_INTERPRET=1 before salt_fast.kernels is first imported (or pass CUDA tensors)"
            )
        _interpret_kernels()


_LAUNCH_ON_META = threading.local()


@contextmanager
def launch_on_meta() -> Iterator[None]:
    """Within (this thread): the custom ops run their real implementations on meta tensors instead of
    their fake ones, so the wrappers make their launch choices and call ``kernel[grid](...)`` with meta
    tensors. Only for tools that record those launches instead of running them (benchmarks/aot.py
    replaces each kernel's ``JITFunction.run``): a real launch on meta tensors fails."""
    previous = getattr(_LAUNCH_ON_META, "on", False)
    _LAUNCH_ON_META.on = True
    try:
        yield
    finally:
        _LAUNCH_ON_META.on = previous


def launching_on_meta() -> bool:
    """True within ``launch_on_meta()``."""
    return getattr(_LAUNCH_ON_META, "on", False)
