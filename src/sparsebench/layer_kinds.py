"""Layer types that sparsebench recognises without importing the library that defines them.

Kept apart from the techniques so that metrics and the inference compiler can ask the same
question as ``select_layers`` without depending on ``sparsify``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["is_transposed_linear"]


def is_transposed_linear(module: nn.Module) -> bool:
    """Returns True for transformers' ``Conv1D`` (the GPT-2 family's attention and MLP layers):
    ``y = x·W + b`` with W stored (in, out), a Linear with a transposed weight. Recognised by its
    class so that sparsebench needs no transformers."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.split(".")[0] == "transformers"
