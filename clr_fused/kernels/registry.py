"""Backend name -> module with ``sgd_`` and ``adam_`` bucket updates.

Every backend implements the same two functions with the signatures of
``reference.sgd_`` / ``reference.adam_``, so the optimizers never branch on
the backend beyond this lookup.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {"torch": "reference", "triton": "triton_update", "cuda": "cuda_update"}


def kernels_for(backend: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{_MODULES[backend]}")
