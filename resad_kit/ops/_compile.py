"""Optional ``torch.compile`` of pure tensor functions, with an eager fallback (private).

``compiled(fn)`` returns a callable that compiles ``fn`` on first use and falls back to ``fn``
itself, for good, when compilation is unavailable or fails (no C++ compiler or Triton, an
unsupported platform or Python version). The reason is kept in :attr:`Compiled.error`.
Only functions without side effects may be wrapped: after a failed attempt the call is simply
repeated eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__: list[str] = []


class Compiled:
    """``fn`` compiled on first call (``dynamic=True``: one graph for every chunk shape)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.compiled: Callable[..., Any] | None = None
        self.error: Exception | None = None

    def __call__(self, *args: Any) -> Any:
        if self.error is None:
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn, dynamic=True)
                return self.compiled(*args)
            except Exception as error:
                self.error = error
        return self.fn(*args)


def compiled(fn: Callable[..., Any]) -> Compiled:
    """Wrap ``fn`` for optional compilation (see the module doc)."""
    return Compiled(fn)
