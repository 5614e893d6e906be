"""Former home of backend selection, kept so `dqt_triton.backends` imports keep working.

The code lives in `dqt_triton.dispatch`: torch.compile skips every file whose path contains
"triton/backends" (a rule meant for Triton's own backends), which matched this one and broke
`torch.compile(fullgraph=True)` of any model calling the ops.
"""

from .dispatch import BACKENDS, resolve_backend, triton_interpreter_enabled, use_backend

__all__ = ["BACKENDS", "resolve_backend", "triton_interpreter_enabled", "use_backend"]
