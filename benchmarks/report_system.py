"""The system sections of :mod:`report`: one full prediction, scaling in K and in the image
size, and ``torch.compile``.
"""

from __future__ import annotations

from report_data import Cases
from report_format import mib, ms, support_range, table

__all__ = ["compiled_section", "pipeline_section", "scaling_section"]


def pipeline_section(cases: Cases, device: str) -> str:
    """Time and share of backbone, retrieval and scoring in one prediction (``Not run.``
    without the case), and the share the official retrieval path would take."""
    case = cases.find(kernel="pipeline", device=device)
    if case is None:
        return "Not run."
    parts = ("backbone", "retrieval", "scoring")
    total = sum(case.get(f"{p}_s") for p in parts)
    rows = [
        (p, f"{case.get(f'{p}_s'):.2f}", f"{100 * case.get(f'{p}_share'):.1f} %") for p in parts
    ]
    rows.append(("**total**", f"**{total:.2f}**", "100 %"))
    out = [table(("stage", "time (s)", "share"), rows)]
    official = cases.time(
        kernel="retrieve",
        impl="official",
        shots=case.get("shots"),
        dim=768,
        dtype="float32",
        device=device,
    )
    if official is not None:
        other = case.get("backbone_s") + case.get("scoring_s")
        out.append(
            f"With the official retrieval path instead (its four-layer time from the `retrieve` "
            f"table, {official:.2f} s), retrieval would take "
            f"{100 * official / (other + official):.1f} % of a {other + official:.1f} s "
            f"prediction. Throughput with the fast path: {1 / total:.3f} images/s; per-image "
            f"retrieval: {1000 * case.get('retrieval_s'):,.0f} ms. Sparsemax support in this "
            f"test (min / median / max): {support_range(case)} "
            f"(the bank is made of noisy, shifted copies of the test image's own features; "
            f"see below)."
        )
    return "\n\n".join(out)


def scaling_section(cases: Cases, device: str) -> str:
    """Time and peak memory of ``retrieve`` against K, and against the image size per
    chunking policy."""
    rows = []
    for shots in cases.values("shots", kernel="scaling_shots", device=device):
        c = cases.find(kernel="scaling_shots", shots=shots, device=device)
        rows.append(
            (
                shots,
                f"{c.get('columns'):,}",
                support_range(c),
                ms(c.seconds),
                mib(c.get("peak_mib")),
            )
        )
    out = [
        "Time and peak memory against K (518 px, N = 1,369, one layer, default chunking: one "
        "block of all 1,369 rows at every K):\n\n"
        + table(("K", "M", "support min / median / max", "time (ms)", "peak memory (MiB)"), rows)
    ]
    rows = []
    for pixels in cases.values("pixels", kernel="scaling_size", device=device):
        for policy in ("all", "budget"):
            c = cases.find(kernel="scaling_size", pixels=pixels, impl=policy, device=device)
            if c is None:
                continue
            chunk = "`None`" if c.get("chunk_size") is None else f"{c.get('chunk_size'):,}"
            inputs = (c.get("rows") + c.get("columns")) * c.get("dim") * 4 / 2**20
            rows.append(
                (
                    pixels,
                    f"{c.get('rows'):,}",
                    f"{c.get('columns'):,}",
                    f"{inputs:,.0f}",
                    policy,
                    chunk,
                    ms(c.seconds),
                    mib(c.get("peak_mib")),
                )
            )
    out.append(
        "Time and peak memory against the image size (K = 4, one layer):\n\n"
        + table(
            (
                "image (px)",
                "N",
                "M",
                "inputs (MiB)",
                "policy",
                "`chunk_size`",
                "time (ms)",
                "peak memory (MiB)",
            ),
            rows,
        )
    )
    return "\n\n".join(out)


def compiled_section(cases: Cases, device: str) -> str:
    """Eager vs ``compile=True`` with the two alternating, or how to run the opt-in case."""
    case = cases.find(kernel="compiled", device=device)
    if case is None:
        return (
            "Not measured in this run (opt-in: `pytest benchmarks/bench_retrieval.py "
            "--benchmark-only --compile -k compiled`)."
        )
    ratio_value = case.get("paired_ratio")
    rows = [
        ("eager", ms(case.get("baseline_s")), "1.0×"),
        ("`compile=True`", ms(case.get("fast_s")), f"**{ratio_value:.2f}×**"),
    ]
    text = (
        "Eager and compiled alternating round by round (median times; speed-up = median of "
        f"the per-round ratios); the first compiled call, which compiles, took "
        f"{case.get('first_call_s'):.1f} s.\n\n"
        + table(("`retrieve`, 4 layers, K = 4", "time (ms)", "speed-up"), rows)
    )
    if case.get("compile_error"):
        text += f"\n\nCompilation failed and the eager code ran: `{case.get('compile_error')}`."
    return text
