"""The one vocabulary of training phases (Res²CLIP's alternating schedule, paper Sec. 3.7).

``"visual"`` epochs train the residual visual adapters, ``"text"`` epochs the residual
text adapter; every module, loss and engine function that takes a phase uses these names.
"""

from __future__ import annotations

from typing import Literal

__all__: list[str] = []

Phase = Literal["visual", "text"]
PHASES: tuple[Phase, ...] = ("visual", "text")
