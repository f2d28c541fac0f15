"""Backend name -> module with ``sgd_`` and ``adam_`` bucket updates.

Every backend implements the same two functions with the signatures of
``reference.sgd_`` / ``reference.adam_`` (one plan bucket in, see
``optim/plan.py``), so the optimizers never branch on the backend beyond this
lookup.  ``"cuda"`` and ``"cpu"`` are one module: the dispatcher picks the
kernel by the tensors' device.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {"torch": "reference", "triton": "triton_update", "cuda": "compiled", "cpu": "compiled"}
_loaded: dict[str, ModuleType] = {}


def kernels_for(backend: str) -> ModuleType:
    # A plain dict hit after the first call: torch.compile traces it without a
    # graph break (importlib is on dynamo's skip list).
    mod = _loaded.get(backend)
    if mod is None:
        mod = _loaded[backend] = importlib.import_module(f"{__package__}.{_MODULES[backend]}")
    return mod
