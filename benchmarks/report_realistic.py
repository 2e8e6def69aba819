"""The sections of :mod:`report` for realistic supports and whole predictions (issue 19), the
GPU cases, and the regression check between two commits (issue 13).

* :func:`sweep_section`: ``retrieve`` against the GEMM floor per support case;
* :func:`stages_section`: where ``retrieve``'s time goes, stage by stage;
* :func:`end_to_end_section`: one Res²CLIP prediction against the official-style pipeline,
  with the achieved FLOP/s against the machine's GEMM throughput;
* :func:`gpu_section`: autocast parity and throughput, or "not measured";
* :func:`regression_section`: the JSON of ``compare_revisions.py``.
"""

from __future__ import annotations

from typing import Any

from report_data import Cases
from report_format import ms, support_range, table

__all__ = [
    "end_to_end_section",
    "gpu_section",
    "other_section",
    "regression_section",
    "stages_section",
    "sweep_section",
]

NOT_MEASURED = "not measured"
STAGE_NAMES = {
    "gemm": "similarity GEMM",
    "penalty": "radial penalty",
    "screen": "screen (block maxima; or the top-64 start)",
    "sort": "sort of the screened candidates",
    "widen": "thresholds and widening rounds",
    "weights": "weights on the support",
    "gather_sum": "gather-and-sum (Eq. 34)",
}
SCREEN_PART_NAMES = {  # a breakdown of the screen row (not added to the sum)
    "screen_maxima": "↳ screen: levels of block maxima (a pass over the block)",
    "screen_bound": "↳ screen: threshold bounds on the maxima",
    "screen_select": "↳ screen: block compared with the bound, entries kept compacted",
    "screen_tighten": "↳ screen: tighter bound, second compaction",
}


def _spread(case: Any, key: str) -> str:
    return f"{case.get(key):.2f}× ({case.get(key + '_min'):.2f}–{case.get(key + '_max'):.2f})"


def sweep_section(cases: Cases, device: str) -> str:
    """One row per support case: supports, floor and ``retrieve`` times, their ratio."""
    found = [c for c in cases.cases if c.get("kernel") == "support_sweep"]
    found = sorted((c for c in found if c.get("device") == device), key=_median_support)
    if not found:
        return "Not run."
    rows = []
    for c in found:
        name = f"`{c.get('case')}`" + (" (default)" if c.get("default") else "")
        rows.append(
            (
                name,
                support_range(c),
                ms(c.get("floor_s")),
                ms(c.get("fast_s")),
                _spread(c, "fast/floor"),
                c.get("rounds"),
            )
        )
    out = [
        table(
            (
                "case",
                "support min / median / max",
                "GEMM floor (ms)",
                "`retrieve` (ms)",
                "`retrieve` / floor: median (min–max)",
                "rounds",
            ),
            rows,
        )
    ]
    default = next((c for c in found if c.get("default")), None)
    if default is not None and default.get("official_s") is not None:
        out.append(
            f"Default case `{default.get('case')}` with the official path alternating too: "
            f"official {ms(default.get('official_s'))} ms, `retrieve` "
            f"{ms(default.get('fast_s'))} ms, floor {ms(default.get('floor_s'))} ms; official / "
            f"`retrieve` = {_spread(default, 'official/fast')}, official / floor = "
            f"{_spread(default, 'official/floor')} (the most any exact retrieval could gain)."
        )
    worst = max(c.get("fast/floor") for c in found)
    met = "met" if worst <= 1.3 else "**not met**"
    within = [f"`{c.get('case')}`" for c in found if c.get("fast/floor") <= 1.3]
    above = [
        f"`{c.get('case')}` ({c.get('fast/floor'):.2f}×)"
        for c in found
        if c.get("fast/floor") > 1.3
    ]
    out.append(
        f"Target of issue 19, `retrieve` within 1.3× of the floor across the sweep: {met} "
        f"(largest median ratio {worst:.2f}×)."
        + (f" Within 1.3×: {', '.join(within)}." if within and above else "")
        + (
            f" Above: {', '.join(above)}; the stage table below shows what bounds them."
            if above
            else ""
        )
    )
    return "\n\n".join(out)


def _median_support(case: Any) -> float:
    return case.get("support_median") or 0.0


def stages_section(cases: Cases, device: str) -> str:
    """Milliseconds of every stage of ``retrieve`` per support case (CPU only)."""
    found = [c for c in cases.cases if c.get("kernel") == "stages" and c.get("device") == device]
    if not found:
        return "Not run."
    found.sort(key=lambda c: _sweep_support(cases, c.get("case"), device))
    headers = ("stage", *(f"`{c.get('case')}`" for c in found))
    rows = []
    for key, label in STAGE_NAMES.items():
        rows.append((label, *(ms(c.get(f"stage_{key}_s")) for c in found)))
        if key == "screen" and any(c.get("stage_screen_select_s") is not None for c in found):
            rows += [
                (part, *(_part_ms(c, k) for c in found)) for k, part in SCREEN_PART_NAMES.items()
            ]
    rows.append(
        (
            "**sum of the stages**",
            *(f"**{ms(sum(c.get(f'stage_{k}_s') for k in STAGE_NAMES))}**" for c in found),
        )
    )
    rows.append(("layers screened", *(f"{c.get('screened'):.0%}" for c in found)))
    rows.append(("first-pass width", *(c.get("first_width") for c in found)))
    rows.append(("support width", *(c.get("support_width") for c in found)))
    return table(headers, rows) + "\n\n" + _stage_summary(found)


def _part_ms(case: Any, key: str) -> str:
    value = case.get(f"stage_{key}_s")
    return "–" if value is None or not case.get("screened") else ms(value)


def _stage_summary(found: list[Any]) -> str:
    """Per case, the stages beyond the GEMM: their sum against the GEMM, the largest one."""
    lines = []
    for c in found:
        times = {k: c.get(f"stage_{k}_s") for k in STAGE_NAMES}
        beyond = sum(times.values()) - times["gemm"]
        top = max((k for k in times if k != "gemm"), key=times.get)
        lines.append(
            f"- `{c.get('case')}`: the stages beyond the GEMM take {ms(beyond)} ms, "
            f"{beyond / times['gemm']:.2f}× the GEMM's {ms(times['gemm'])} ms; the largest is "
            f"the {STAGE_NAMES[top]}, {ms(times[top])} ms ({times[top] / beyond:.0%})"
            f"{_screen_summary(c)}. GEMM, penalty and gather-and-sum alone, the stages that "
            "do not depend on how the support is found: "
            f"{(times['gemm'] + times['penalty'] + times['gather_sum']) / times['gemm']:.2f}× "
            "the GEMM."
        )
    return "\n".join(lines)


def _screen_summary(case: Any) -> str:
    """Whether the screen paid off, and its largest part where it did."""
    screened = case.get("screened")
    if not screened:
        return "; the screen gave up on every layer"
    out = "" if screened == 1 else f"; the screen narrowed {screened:.0%} of the layers"
    parts = {k: case.get(f"stage_{k}_s") for k in SCREEN_PART_NAMES}
    if all(v is not None for v in parts.values()):
        part = max(parts, key=parts.get)
        name = SCREEN_PART_NAMES[part].removeprefix("↳ screen: ")
        out += (
            f"; the screen's largest part: {name}, {ms(parts[part])} ms "
            f"({parts[part] / sum(parts.values()):.0%} of its parts)"
        )
    return out


def _sweep_support(cases: Cases, case: str, device: str) -> float:
    found = cases.find(kernel="support_sweep", case=case, device=device)
    return 0.0 if found is None else _median_support(found)


def end_to_end_section(cases: Cases, device: str) -> str:
    """Res²CLIP against the official-style pipeline, per backbone and mode."""
    found = [
        c for c in cases.cases if c.get("kernel") == "end_to_end" and c.get("device") == device
    ]
    if not found:
        return "Not run."
    rows = []
    for c in found:
        gemm = c.get("gemm_flops")
        fast_rate = c.get("fast_flop") / c.get("fast_s")
        official_rate = c.get("official_flop") / c.get("baseline_s")
        rows.append(
            (
                f"{c.get('model')} ({c.get('depth')}×{c.get('width')}, D = {c.get('dim')})",
                c.get("mode").replace("_", "-"),
                support_range(c),
                f"{c.get('baseline_s'):.2f}",
                f"{c.get('fast_s'):.2f}",
                _spread(c, "official/fast"),
                f"{official_rate / 1e9:.0f} / {fast_rate / 1e9:.0f} / {gemm / 1e9:.0f}",
                f"{c.get('official_flop') / 1e9:,.0f} / {c.get('fast_flop') / 1e9:,.0f}",
                c.get("rounds"),
            )
        )
    out = [
        table(
            (
                "backbone",
                "mode",
                "support min / median / max",
                "official (s)",
                "resad_kit (s)",
                "speed-up: median (min–max)",
                "GFLOP/s: official / resad_kit / GEMM",
                "GFLOP per prediction: official / resad_kit",
                "rounds",
            ),
            rows,
        )
    ]
    if not any(c.get("model") == "vit-l" for c in found):
        out.append(
            "ViT-L/14-336 end to end: not run here (opt-in: `--vit-l` or `RESAD_BENCH_VITL=1`)."
        )
    return "\n\n".join(out)


def gpu_section(cases: Cases) -> str:
    """The CUDA cases of the end-to-end file, or a "not measured" table."""
    parity = [c for c in cases.cases if c.get("kernel") == "gpu_autocast"]
    throughput = [c for c in cases.cases if c.get("kernel") == "gpu_throughput"]
    if not parity and not throughput:
        return table(
            ("case", "result"),
            [
                (
                    "autocast bfloat16 vs float32 (parity within 5e-2 of the largest value)",
                    NOT_MEASURED,
                ),
                (
                    "autocast float16 vs float32 (parity within 1e-2 of the largest value)",
                    NOT_MEASURED,
                ),
                *(
                    (f"images/s, ViT-L/14-336, 518 px, batch 16, K = {k}", NOT_MEASURED)
                    for k in (1, 2, 4)
                ),
            ],
        )
    rows = [
        (
            f"autocast {c.get('dtype')} vs float32 ({c.get('device')})",
            f"map error {c.get('map_error'):.2e}, score error {c.get('score_error'):.2e} "
            f"(tolerance {c.get('tolerance'):g} of the largest value); speed-up "
            f"{c.get('paired_ratio'):.2f}×",
        )
        for c in parity
    ]
    rows += [
        (
            f"images/s, ViT-L/14-336, 518 px, batch {c.get('images')}, K = {c.get('shots')} "
            f"({c.get('device')})",
            f"{c.get('images') / c.seconds:.1f}",
        )
        for c in sorted(throughput, key=lambda c: c.get("shots"))
    ]
    return table(("case", "result"), rows)


_REVISION_CASES = {
    "retrieve": "`retrieve`, 4 layers, K = 4, D = 1,024, default support case",
    "sparsemax": '`sparsemax(k="auto")`, one layer, K = 4, default support case',
    "sparsemax_s300": '`sparsemax(k="auto")`, one layer, K = 4, case `s300`',
    "pipeline": "training-free `Res2CLIP` prediction, narrow 24-block backbone, 518 px",
}


def regression_section(revisions: dict[str, Any] | None) -> str:
    """The two commits' times and the per-round ratios, or "not measured"."""
    if revisions is None:
        return f"Regression check: {NOT_MEASURED} (run `benchmarks/compare_revisions.py`)."
    rows = [
        (
            _REVISION_CASES.get(r["case"], r["case"]),
            r["rounds"],
            ms(r["old_s"]),
            ms(r["new_s"]),
            f"{r['ratio']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})",
            "yes" if r["identical"] else "no",
        )
        for r in revisions["results"]
    ]
    intro = (
        f"`{revisions['file']}`: commit `{revisions['old']}` (before the refactor of issue 13) "
        f"against `{revisions['new']}`, "
        f"{revisions['date']}, {revisions['cpu_count']} cores, 1-minute load average "
        f"{revisions['load_average_start']:.1f} at the start and "
        f"{revisions['load_average_end']:.1f} at the end; `benchmarks/compare_revisions.py`: "
        "one worker process per commit, alternating round by round, outputs compared bit for "
        "bit first. Ratio: new / old time (below 1: faster), median of the per-round ratios "
        "(min–max)."
    )
    headers = ("case", "rounds", "old (ms)", "new (ms)", "new / old", "bit-identical")
    return intro + "\n\n" + table(headers, rows)


KNOWN_KERNELS = {
    "aggregation", "batched", "compiled", "end_to_end", "first_pass", "floor", "gpu_autocast",
    "gpu_throughput", "pipeline", "retrieve", "retrieve_paired", "scaling_shots", "scaling_size",
    "sparsemax", "sparsemax_paired", "stages", "support_sweep",
}  # fmt: skip
_SHOWN_FIELDS = ("impl", "shots", "dim", "dtype", "case")


def other_section(cases: Cases, device: str) -> str:
    """A table of the cases no other section shows (e.g. a new ``bench_*.py``), or ``""``."""
    found = [
        c for c in cases.cases if c.get("kernel") not in KNOWN_KERNELS and c.get("device") == device
    ]
    rows = [
        (
            c.get("kernel"),
            ", ".join(f"{k}={c.get(k)}" for k in _SHOWN_FIELDS if c.get(k) is not None),
            support_range(c),
            c.rounds,
            ms(c.seconds),
        )
        for c in found
    ]
    headers = ("group", "case", "support min / median / max", "rounds", "median (ms)")
    return table(headers, rows) if rows else ""
