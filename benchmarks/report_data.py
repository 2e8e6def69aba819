"""Reading pytest-benchmark JSON for :mod:`report`: runs, cases and lookups among them.

A case is one benchmark of the suite: the parameters that :func:`harness.record` stored in
``extra_info`` (``kernel``, ``impl``, ``shots``, ``dim``, ``dtype``, ``device``, ...) and the
**median** of its rounds (``stats.median``), which every table of the report shows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "Case", "Cases", "Run", "load"]

ROOT = Path(__file__).resolve().parents[1]  # the page names the runs relative to it

# What the report needs from every JSON file and from every benchmark in it.
_RUN_KEYS = ("machine_info", "datetime", "benchmarks")
_STATS_KEYS = ("median", "rounds")
_INFO_KEYS = ("kernel", "device")


@dataclass(frozen=True)
class Case:
    """One benchmark case: its parameters (``extra_info``) and median time in seconds."""

    info: dict[str, Any]
    seconds: float
    rounds: int
    run: int  # index of the JSON file it came from

    def get(self, name: str, default: Any = None) -> Any:
        return self.info.get(name, default)


@dataclass
class Run:
    """One JSON file: its machine description, date and cases."""

    path: Path
    machine: dict[str, Any]
    date: str
    cases: list[Case] = field(default_factory=list)


def _read(path: Path) -> dict[str, Any]:
    """The JSON of ``path``, checked to hold what the report reads (``ValueError`` if not)."""
    if not path.is_file():
        raise ValueError(f"benchmark JSON {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"benchmark JSON {str(path)!r} is not valid JSON: {error}") from None
    missing = [key for key in _RUN_KEYS if not isinstance(data, dict) or key not in data]
    if missing:
        raise ValueError(
            f"{str(path)!r} is not pytest-benchmark JSON (--benchmark-json): "
            f"it has no {', '.join(missing)}"
        )
    for bench in data["benchmarks"]:
        name = bench.get("fullname") or bench.get("name") or "?"
        stats, info = bench.get("stats") or {}, bench.get("extra_info") or {}
        lacking = [f"stats.{k}" for k in _STATS_KEYS if k not in stats]
        lacking += [f"extra_info.{k}" for k in _INFO_KEYS if info.get(k) is None]
        if lacking:
            raise ValueError(
                f"benchmark {name!r} in {str(path)!r} has no {', '.join(lacking)}: the report "
                "reads the cases that benchmarks/harness.py records"
            )
    return data


def load(paths: Sequence[Path]) -> list[Run]:
    """One :class:`Run` per JSON file, in the order given (``ValueError`` for a bad file)."""
    runs = []
    for index, path in enumerate(paths):
        data = _read(path)
        run = Run(path, data["machine_info"], data["datetime"])
        for bench in data["benchmarks"]:
            stats = bench["stats"]
            run.cases.append(Case(bench["extra_info"], stats["median"], stats["rounds"], index))
        runs.append(run)
    return runs


class Cases:
    """The cases of all runs, looked up by their ``extra_info`` fields."""

    def __init__(self, cases: Sequence[Case]) -> None:
        self.cases = list(cases)

    def find(self, **match: Any) -> Case | None:
        """The first case whose fields equal ``match``, or ``None``."""
        found = [c for c in self.cases if all(c.get(k) == v for k, v in match.items())]
        return found[0] if found else None

    def time(self, **match: Any) -> float | None:
        """The median time in seconds of :meth:`find`'s case, or ``None``."""
        case = self.find(**match)
        return None if case is None else case.seconds

    def values(self, name: str, **match: Any) -> list[Any]:
        """The sorted distinct values of field ``name`` among the cases matching ``match``."""
        seen = {c.get(name) for c in self.cases if all(c.get(k) == v for k, v in match.items())}
        return sorted(v for v in seen if v is not None)

    def devices(self) -> list[str]:
        """The devices measured, CPU first."""
        return sorted({c.get("device") for c in self.cases}, key=lambda d: d != "cpu")
