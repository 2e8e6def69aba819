"""How :mod:`report` writes numbers and tables: milliseconds, speed-ups, MiB, markdown."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from report_data import Case

__all__ = ["mib", "ms", "ratio", "support", "support_range", "table"]


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds: no decimals from 100 ms, one from 10 ms, two below; ``–``
    for a case that was not measured."""
    if seconds is None:
        return "–"
    value = seconds * 1000
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(baseline: float | None, fast: float | None) -> str:
    """The speed-up ``baseline / fast`` in bold with one decimal, ``–`` if either is missing."""
    if baseline is None or fast is None:
        return "–"
    return f"**{baseline / fast:.1f}×**"


def mib(value: float | None) -> str:
    """MiB without decimals, ``–`` if not measured."""
    return "–" if value is None else f"{value:,.0f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def support(case: Case | None) -> str:
    """A case's sparsemax support size: ``median (max)`` over the rows, ``–`` if not recorded."""
    if case is None or case.get("support_median") is None:
        return "–"
    return f"{case.get('support_median'):.0f} ({case.get('support_max'):.0f})"


def support_range(case: Case | None) -> str:
    """A case's sparsemax support sizes over all rows, ``min / median / max`` (``–`` if not
    recorded; ``median (max)`` for a run that recorded no minimum)."""
    if case is None or case.get("support_min") is None:
        return support(case)
    return (
        f"{case.get('support_min'):.0f} / {case.get('support_median'):.0f} / "
        f"{case.get('support_max'):.0f}"
    )
