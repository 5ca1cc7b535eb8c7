"""For test dispatch modes: look inside salt_fast's custom ops.

A ``TorchDispatchMode`` sees a custom op (``salt_fast.gather_tokens`` ...) as one call, and not
the aten ops its implementation dispatches (allocations, the count of valid tokens, any sync).
``run_inside`` runs the op's implementation with the mode active again, so the mode sees them.
"""

from salt_fast.kernels import _ops


def run_inside(mode, func, args, kwargs):
    """``func(*args, **kwargs)`` for ``mode.__torch_dispatch__``: a salt_fast op runs its
    implementation under ``mode`` (its inner ops are dispatched to ``mode``), any other op as is."""
    if func.namespace != _ops.NAMESPACE:
        return func(*args, **kwargs)
    with mode:
        return _ops.REGISTERED[str(func._overloadpacket)].impl(*args, **kwargs)
