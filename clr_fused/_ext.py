"""The one place that loads the compiled CUDA extension.

The import error is kept, not raised: ``backend="auto"`` falls back silently,
and only an explicit ``backend="cuda"`` raises it (see ``backends.py``).
"""

from __future__ import annotations

_module = None
_error: BaseException | None = None


def load():
    """The extension module, or ``None``; the failure is kept for :func:`error`."""
    global _module, _error
    if _module is None and _error is None:
        try:
            from . import _C  # type: ignore[attr-defined]  # built by setup.py

            _module = _C
        except ImportError as exc:
            _error = exc
    return _module


def error() -> BaseException | None:
    """Why the extension is unavailable (``None`` when it loaded)."""
    load()
    return _error
