"""Turn saved pytest-benchmark JSON into docs/benchmarks.md and its plots.

    pytest benchmarks/ --benchmark-only --benchmark-json=results/bench-cpu.json
    python benchmarks/report.py results/bench-cpu.json [results/bench-cuda.json ...]

Every number in the page comes from the JSON files: median times of each case, speed-ups
against the baseline measured in the same run (same kernel, shots, channels, dtype, device),
the support sizes and peak memory recorded in ``extra_info``, and the machine, load and date
that pytest-benchmark saved. Writes ``docs/benchmarks.md`` and ``docs/benchmarks_*.png``
(``--out`` elsewhere: the plots go next to the page).

The work is split by concern: :mod:`report_data` (reading the JSON), :mod:`report_format`
(numbers and tables), :mod:`report_targets` (the targets table and the 4× note),
:mod:`report_kernels` and :mod:`report_system` (the sections), :mod:`report_plots` and
:mod:`report_page` (the page).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# The report's modules sit beside this file: found when it runs as a script, and here also
# with ``python -m benchmarks.report`` (this folder is not a package).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from report_data import ROOT, load  # noqa: E402
from report_page import render  # noqa: E402

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON file(s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--revisions", type=Path, help="JSON of compare_revisions.py (the regression check)"
    )
    args = parser.parse_args(argv)
    try:
        runs = load(args.json)
    except ValueError as error:
        parser.error(str(error))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        page = render(runs, args.out.parent, args.revisions)
    except ValueError as error:
        parser.error(str(error))
    args.out.write_text(page)
    print(f"wrote {args.out} from {sum(len(r.cases) for r in runs)} cases")


if __name__ == "__main__":
    main()
