"""``optimizer.state`` that knows when it was written.

The launch plan caches, per bucket, the state tensors its kernels update.
Code that replaces state between steps -- ``opt.state[p]["exp_avg"] = t``,
``opt.state[p] = {}``, ``opt.state.clear()``, ``del opt.state[p]`` (pruning
and re-initialisation recipes) -- must reach the next step, as it does with
a torch optimizer, which reads ``self.state`` every step.  Comparing every
entry every step would cost O(tensors) of Python; instead the state mapping
and each parameter's dict count their writes in one version number, and the
plan is rebuilt when it moved (one integer compare per step).

``StateStore`` is a ``collections.defaultdict`` (torch's type for
``Optimizer.state``); a parameter's state is a ``SlotDict`` (a ``dict``).
A plain dict assigned to ``opt.state[p]`` is adopted as a ``SlotDict`` with
the same items (later writes go through ``opt.state[p]``), and a mapping
assigned to ``opt.state`` itself is adopted at the next step.  ``state_dict()``
saves plain dicts, so checkpoints load with ``weights_only=True`` anywhere.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


class SlotDict(dict):
    """One parameter's state: every write moves its store's version."""

    def __init__(self, store: StateStore | None = None, items: Any = ()) -> None:
        super().__init__(items)
        self._store = store

    def _moved(self) -> None:
        store = getattr(self, "_store", None)  # (unset while a pickle is being restored)
        if store is not None:
            store.version += 1

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self._moved()

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self._moved()

    def __ior__(self, other):
        self.update(other)
        return self

    def pop(self, *args):
        out = super().pop(*args)
        self._moved()
        return out

    def popitem(self):
        out = super().popitem()
        self._moved()
        return out

    def clear(self) -> None:
        super().clear()
        self._moved()

    def update(self, *args, **kwargs) -> None:
        super().update(*args, **kwargs)
        self._moved()

    def setdefault(self, key, default=None):
        out = super().setdefault(key, default)
        self._moved()
        return out

    def __reduce__(self):
        # copies and pickles carry the items; the store re-links them when they are put back in it
        return (SlotDict, (None, dict(self)))


class StateStore(defaultdict):
    """``optimizer.state``: parameter -> ``SlotDict``, with a write counter."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__(dict)
        self.version = 0
        for key, value in dict(items).items():
            self[key] = value

    def _adopt(self, value: Any) -> Any:
        if isinstance(value, SlotDict) and value._store is self:
            return value
        if isinstance(value, dict):
            return SlotDict(self, value)
        return value  # (a hook's own entry: kept as it is)

    def __missing__(self, key) -> SlotDict:
        value = SlotDict(self)
        super().__setitem__(key, value)
        self.version += 1
        return value

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, self._adopt(value))
        self.version += 1

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self.version += 1

    def __ior__(self, other):
        self.update(other)
        return self

    def pop(self, *args):
        out = super().pop(*args)
        self.version += 1
        return out

    def popitem(self):
        out = super().popitem()
        self.version += 1
        return out

    def clear(self) -> None:
        super().clear()
        self.version += 1

    def update(self, *args, **kwargs) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def __reduce__(self):
        return (StateStore, (dict(self),))

    def __copy__(self) -> StateStore:
        return StateStore(dict(self))
