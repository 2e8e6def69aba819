"""Turn saved pytest-benchmark JSON into docs/benchmarks.md and its plots.

    pytest benchmarks/ --benchmark-only --benchmark-json=results/bench-cpu.json
    python benchmarks/report.py results/bench-cpu.json [results/bench-cuda.json ...]

Every number in the page comes from the JSON files: median times of each case, speed-ups
against the baseline measured in the same run (same kernel, shots, channels, dtype, device),
the support sizes and peak memory recorded in ``extra_info``, and the machine, load and date
that pytest-benchmark saved. Writes ``docs/benchmarks.md`` and ``docs/benchmarks_*.png``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY = ("kernel", "shots", "dim", "dtype", "device")


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


def load(paths: Sequence[Path]) -> list[Run]:
    runs = []
    for index, path in enumerate(paths):
        data = json.loads(path.read_text())
        run = Run(path, data["machine_info"], data["datetime"])
        for bench in data["benchmarks"]:
            stats = bench["stats"]
            run.cases.append(Case(bench["extra_info"], stats["median"], stats["rounds"], index))
        runs.append(run)
    return runs


# ---------------------------------------------------------------- formatting


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    value = seconds * 1000
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(baseline: float | None, fast: float | None) -> str:
    if baseline is None or fast is None:
        return "–"
    return f"**{baseline / fast:.1f}×**"


def mib(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def support(case: Case | None) -> str:
    if case is None or case.get("support_median") is None:
        return "–"
    return f"{case.get('support_median'):.0f} ({case.get('support_max'):.0f})"


# ---------------------------------------------------------------- lookups


class Cases:
    def __init__(self, cases: Sequence[Case]) -> None:
        self.cases = list(cases)

    def find(self, **match: Any) -> Case | None:
        found = [c for c in self.cases if all(c.get(k) == v for k, v in match.items())]
        return found[0] if found else None

    def time(self, **match: Any) -> float | None:
        case = self.find(**match)
        return None if case is None else case.seconds

    def values(self, name: str, **match: Any) -> list[Any]:
        seen = {c.get(name) for c in self.cases if all(c.get(k) == v for k, v in match.items())}
        return sorted(v for v in seen if v is not None)

    def devices(self) -> list[str]:
        return sorted({c.get("device") for c in self.cases}, key=lambda d: d != "cpu")


# ---------------------------------------------------------------- sections


def header(runs: Sequence[Run]) -> str:
    lines = []
    for run in runs:
        info = run.machine
        date = datetime.fromisoformat(run.date).strftime("%Y-%m-%d")
        cpu = info.get("cpu_model") or info.get("cpu", {}).get("brand_raw", "?")
        gpu = info.get("cuda_device") or "none"
        load = ""
        if info.get("load_average_start") is not None:
            load = (
                f"; 1-minute load average {info['load_average_start']:.1f} at the start and "
                f"{info['load_average_end']:.1f} at the end of the run"
            )
        try:
            name = run.path.resolve().relative_to(ROOT)
        except ValueError:
            name = run.path.name
        duration = ""
        if info.get("suite_seconds") is not None:
            duration = f"; the suite took {info['suite_seconds'] / 60:.1f} min"
        lines.append(
            f"- `{name}`: {date}, {info.get('cpu_count')}-core CPU ({cpu}), "
            f"torch {info.get('torch')} with {info.get('torch_threads')} threads, GPU: {gpu}"
            f"{load}{duration}."
        )
    return "\n".join(lines)


def summary(cases: Cases, device: str) -> str:
    rows = []
    k4 = {"shots": 4, "device": device}
    targets = (
        (
            'sparsemax: `k="auto"` vs official full sort',
            8,
            "sparsemax_paired",
            cases.time(kernel="sparsemax", impl="official", dtype="float32", **k4),
            cases.time(kernel="sparsemax", impl="auto", dtype="float32", **k4),
        ),
        (
            "aggregation: gather-and-sum vs dense product (D = 768)",
            8,
            None,
            cases.time(kernel="aggregation", impl="dense", dim=768, **k4),
            cases.time(kernel="aggregation", impl="sparse", dim=768, **k4),
        ),
        (
            "`retrieve`, 4 layers, vs official path (D = 768)",
            4,
            "retrieve_paired",
            cases.time(kernel="retrieve", impl="official", dim=768, dtype="float32", **k4),
            cases.time(kernel="retrieve", impl="fast", dim=768, dtype="float32", **k4),
        ),
    )
    for name, target, paired_kernel, base, fast in targets:
        pair = None if paired_kernel is None else cases.find(kernel=paired_kernel, device=device)
        if pair is not None:
            value = pair.get("paired_ratio")
            rows.append(
                (
                    f"{name}, paths alternating ({pair.rounds} rounds)",
                    f"≥ {target}×",
                    f"{value:.2f}× (median of the per-round ratios)",
                    "yes" if value >= target else "**no**",
                )
            )
        if base is not None and fast is not None:
            rows.append(
                (
                    f"{name}, separate cases",
                    f"≥ {target}×",
                    f"{base / fast:.2f}× (ratio of the medians)",
                    "yes" if base / fast >= target else "**no**",
                )
            )
    pipeline = cases.find(kernel="pipeline", device=device)
    if pipeline is not None:
        share = pipeline.get("retrieval_share")
        met = "yes" if share <= 0.10 else "**no**"
        rows.append(
            (
                "retrieval share of one prediction (ViT-L, 518 px)",
                "≤ 10 %",
                f"{100 * share:.1f} %",
                met,
            )
        )
    sizes = [
        c for c in cases.cases if c.get("kernel") == "scaling_size" and c.get("device") == device
    ]
    budget = sorted((c for c in sizes if c.get("impl") == "budget"), key=lambda c: c.get("pixels"))
    whole = {c.get("pixels"): c for c in sizes if c.get("impl") == "all"}
    # sizes where the 64 MiB block budget binds (fewer rows per chunk than query patches)
    bound = [c for c in budget if c.get("chunk_size") < c.get("rows")]
    same = [whole.get(c.get("pixels")) for c in bound]
    if len(bound) > 1 and all(
        c is not None and c.get("peak_mib") is not None for c in bound + same
    ):
        peaks = [c.get("peak_mib") for c in bound]
        rows.append(
            (
                f"peak memory, {bound[0].get('pixels')} → {bound[-1].get('pixels')} px (K = 4)",
                "flat in N with chunking (±25 %)",
                f"≤ 64 MiB blocks: {mib(min(peaks))}–{mib(max(peaks))} MiB; one N×M block: "
                f"{mib(same[0].get('peak_mib'))} → {mib(same[-1].get('peak_mib'))} MiB",
                "yes" if max(peaks) <= 1.25 * min(peaks) else "**no**",
            )
        )
    return table(("target (N = 1,369, M = 4·1,369, K = 4)", "goal", "measured", "met"), rows)


def sparsemax_section(cases: Cases, device: str) -> str:
    rows = []
    for shots in cases.values("shots", kernel="sparsemax", device=device, impl="auto"):
        match = {"kernel": "sparsemax", "shots": shots, "device": device, "dtype": "float32"}
        base, fast = cases.find(impl="official", **match), cases.find(impl="auto", **match)
        if base is None or fast is None:
            continue
        rows.append(
            (
                shots,
                f"{base.get('columns'):,}",
                support(base),
                ms(base.seconds),
                ms(fast.seconds),
                ratio(base.seconds, fast.seconds),
            )
        )
    out = [
        table(
            ("K", "M", "support median (max)", "official sort (ms)", '`k="auto"` (ms)', "speed-up"),
            rows,
        )
    ]
    extra = []
    k4 = {"kernel": "sparsemax", "shots": 4, "device": device}
    official32 = cases.time(impl="official", dtype="float32", **k4)
    names = {
        "sort": "resad_kit full sort (`k=None`)",
        "auto": 'resad_kit screen + sort of the candidates (`k="auto"`)',
        "michelot": "Michelot fixed point (benchmarks/alternatives.py)",
        "bisection": "bisection + exact step (benchmarks/alternatives.py)",
    }
    for impl in ("sort", "auto", "michelot", "bisection"):
        t = cases.time(impl=impl, dtype="float32", **k4)
        if t is not None:
            extra.append((names[impl], "float32", ms(t), ratio(official32, t)))
    official16 = cases.time(impl="official", dtype="bfloat16", **k4)
    auto16 = cases.time(impl="auto", dtype="bfloat16", **k4)
    if official16 is not None and auto16 is not None:
        extra.append(("official sort (computes in float32)", "bfloat16", ms(official16), "1.0×"))
        extra.append((names["auto"], "bfloat16", ms(auto16), ratio(official16, auto16)))
    widths = []
    impls = [c.get("impl") for c in cases.cases if c.get("kernel") == "first_pass"]
    impls = sorted(set(impls), key=lambda i: (i == "kauto", int(i[1:]) if i != "kauto" else 0))
    for shots in cases.values("shots", kernel="first_pass", device=device):
        row = [str(shots)]
        for impl in impls:
            c = cases.find(kernel="first_pass", impl=impl, shots=shots, device=device)
            if c is None:
                row.append("–")
            elif c.get("second_pass") is None:
                row.append(ms(c.seconds))
            else:
                row.append(f"{ms(c.seconds)} ({100 * c.get('second_pass'):.0f} %)")
        widths.append(row)
    if widths:
        heads = [f"top-{i[1:]} start" if i != "kauto" else '`k="auto"` (screen)' for i in impls]
        start = (
            "First pass: how each row's sorted support is found (the kernel inside `retrieve`, "
            "no dense output): median time in ms of a top-k start of fixed width (in brackets "
            "the share "
            'of rows that need a second, wider pass), and of `k="auto"`, which screens the row '
            "by block maxima first.\n\n"
        )
        out.append(start + table(("K", *heads), widths))
    if extra:
        out.append(
            "All exact algorithms at K = 4 (speed-up against the official sort of the "
            "same input dtype):"
        )
        out.append(table(("algorithm", "input", "time (ms)", "speed-up"), extra))
    return "\n\n".join(out)


def aggregation_section(cases: Cases, device: str) -> str:
    rows = []
    for dim in cases.values("dim", kernel="aggregation", device=device):
        for shots in cases.values("shots", kernel="aggregation", device=device, dim=dim):
            match = {"kernel": "aggregation", "shots": shots, "dim": dim, "device": device}
            dense, sparse = cases.find(impl="dense", **match), cases.find(impl="sparse", **match)
            if dense is None or sparse is None:
                continue
            rows.append(
                (
                    shots,
                    dim,
                    support(sparse),
                    ms(dense.seconds),
                    ms(sparse.seconds),
                    ratio(dense.seconds, sparse.seconds),
                )
            )
    return table(
        ("K", "D", "support median (max)", "dense `bmm` (ms)", "`embedding_bag` (ms)", "speed-up"),
        rows,
    )


def retrieve_section(cases: Cases, device: str) -> str:
    rows = []
    keys = sorted(
        {
            (c.get("dim"), c.get("dtype"), c.get("shots"))
            for c in cases.cases
            if c.get("kernel") == "retrieve" and c.get("device") == device
        }
    )
    for dim, dtype, shots in sorted(keys, key=lambda k: (k[0] != 768, k[1] != "float32", k[2])):
        match = {"kernel": "retrieve", "shots": shots, "dim": dim, "dtype": dtype, "device": device}
        base = cases.time(impl="official", **match)
        for impl in ("fast", "chunked"):
            fast = cases.time(impl=impl, **match)
            if fast is None:
                continue
            label = "`retrieve`" if impl == "fast" else "`retrieve`, `chunk_size=256`"
            rows.append((shots, dim, dtype, label, ms(base), ms(fast), ratio(base, fast)))
    out = [table(("K", "D", "input", "fast path", "official (ms)", "fast (ms)", "speed-up"), rows)]
    pairs = []
    for kernel, name in (
        ("sparsemax_paired", "sparsemax, one layer"),
        ("retrieve_paired", "`retrieve`, 4 layers"),
    ):
        pair = cases.find(kernel=kernel, device=device)
        if pair is not None:
            pairs.append(
                (
                    name,
                    pair.rounds,
                    ms(pair.get("baseline_s")),
                    ms(pair.get("fast_s")),
                    f"**{pair.get('paired_ratio'):.2f}×**",
                )
            )
    if pairs:
        out.append(
            "The key case (K = 4, D = 768, float32) with the official and the fast path "
            "alternating round by round, so that both see the same machine load (median times; "
            "speed-up = median of the per-round ratios):\n\n"
            + table(("case", "rounds", "official (ms)", "fast (ms)", "speed-up"), pairs)
        )
    floor = cases.time(kernel="floor", impl="gemm", shots=4, device=device)
    pair = cases.find(kernel="retrieve_paired", device=device)
    if floor is not None and pair is not None:
        official, fast = pair.get("baseline_s"), pair.get("fast_s")
        n = 37 * 37
        flops = 2 * n * (4 * n) * 768 * 4  # four (N×D)·(D×M) products, K = 4
        out.append(
            f"Lower bound: the four similarity GEMMs alone (`N×D` by `D×M`, K = 4; "
            f"{flops / floor / 1e9:.0f} GFLOP/s) take {ms(floor)} ms here, so even a retrieval "
            f"that cost "
            f"nothing beyond them would be at most {official / floor:.1f}× faster than the "
            f"official path ({ms(official)} ms) on this machine; the fast path spends "
            f"{ms(fast - floor)} ms ({100 * (fast - floor) / fast:.0f} %) beyond them."
        )
    per_image = cases.find(kernel="batched", impl="per_image", device=device)
    batched = cases.find(kernel="batched", impl="batched", device=device)
    if per_image is not None and batched is not None:
        images = batched.get("images")
        out.append(
            f"Batched test images ({images} images × {batched.get('layers')} layers, K = "
            f"{batched.get('shots')}; results bit-identical):\n\n"
            + table(
                ("call", "time (ms)", "images / s", "speed-up"),
                [
                    (
                        "one `retrieve` per image",
                        ms(per_image.seconds),
                        f"{images / per_image.seconds:.2f}",
                        "1.0×",
                    ),
                    (
                        "one `retrieve` for all images",
                        ms(batched.seconds),
                        f"{images / batched.seconds:.2f}",
                        ratio(per_image.seconds, batched.seconds),
                    ),
                ],
            )
        )
    return "\n\n".join(out)


def pipeline_section(cases: Cases, device: str) -> str:
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
            f"test: median {case.get('support_median'):.0f}, max {case.get('support_max'):.0f} "
            f"(the bank is made of noisy, shifted copies of the test image's own features; "
            f"see below)."
        )
    return "\n\n".join(out)


def scaling_section(cases: Cases, device: str) -> str:
    rows = []
    for shots in cases.values("shots", kernel="scaling_shots", device=device):
        c = cases.find(kernel="scaling_shots", shots=shots, device=device)
        rows.append(
            (shots, f"{c.get('columns'):,}", support(c), ms(c.seconds), mib(c.get("peak_mib")))
        )
    out = [
        "Time and peak memory against K (518 px, N = 1,369, one layer, default chunking: one "
        "block of all 1,369 rows at every K):\n\n"
        + table(("K", "M", "support median (max)", "time (ms)", "peak memory (MiB)"), rows)
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


# ---------------------------------------------------------------- plots


def _log_ticks(ax: Any, xs: Sequence[int]) -> None:
    """Log-log axes labelled in plain numbers: x at the measured points, y at 1-2-5 steps."""
    from matplotlib.ticker import LogLocator, NullLocator, StrMethodFormatter

    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(list(xs), labels=[f"{x:,}" for x in xs])
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.yaxis.set_minor_locator(NullLocator())


def plots(cases: Cases, device: str, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    specs = (
        (
            "sparsemax",
            {"dtype": "float32"},
            ("official", "auto"),
            ("official full sort", 'resad_kit k="auto"'),
            "sparsemax of N×M similarities",
        ),
        (
            "aggregation",
            {"dim": 768},
            ("dense", "sparse"),
            ("dense bmm (official)", "embedding_bag (resad_kit)"),
            "aggregation W·B, D = 768",
        ),
        (
            "retrieve",
            {"dim": 768, "dtype": "float32"},
            ("official", "fast"),
            ("official path", "resad_kit retrieve"),
            "retrieval, 4 layers, D = 768",
        ),
    )
    for kernel, match, impls, labels, title in specs:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for impl, label in zip(impls, labels, strict=True):
            points = [
                (c.get("shots"), c.seconds * 1000)
                for c in cases.cases
                if c.get("kernel") == kernel
                and c.get("impl") == impl
                and c.get("device") == device
                and all(c.get(k) == v for k, v in match.items())
            ]
            if points:
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, ys, marker="o", label=label)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="shots K (M = K·1,369)",
            ylabel="median time (ms)",
            title=f"{title} ({device})",
        )
        _log_ticks(ax, [1, 2, 4, 8, 16])
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        name = f"benchmarks_{kernel}_{device}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    shots = [
        (c.get("shots"), c.seconds * 1000, c.get("peak_mib"))
        for c in cases.cases
        if c.get("kernel") == "scaling_shots" and c.get("device") == device
    ]
    if shots:
        xs, times, peaks = zip(*sorted(shots), strict=True)
        axes[0].plot(xs, times, marker="o", label="time (ms)")
        if all(p is not None for p in peaks):
            axes[0].plot(xs, peaks, marker="s", label="peak memory (MiB)")
        axes[0].set(xscale="log", yscale="log", xlabel="shots K", title="retrieve vs K (518 px)")
        _log_ticks(axes[0], xs)
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend()
        axes[0].grid(True, which="both", alpha=0.3)
    for policy, marker in (("all", "o"), ("budget", "s")):
        points = [
            (c.get("rows"), c.get("peak_mib"))
            for c in cases.cases
            if c.get("kernel") == "scaling_size"
            and c.get("impl") == policy
            and c.get("device") == device
            and c.get("peak_mib") is not None
        ]
        if points:
            xs, ys = zip(*sorted(points), strict=True)
            axes[1].plot(xs, ys, marker=marker, label=f"chunk policy {policy}")
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="query patches N (336 → 1,036 px)",
        ylabel="peak memory (MiB)",
        title="retrieve peak memory vs N (K = 4)",
    )
    sizes = sorted({c.get("rows") for c in cases.cases if c.get("kernel") == "scaling_size"})
    if sizes:
        _log_ticks(axes[1], sizes)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend()
    axes[1].grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    name = f"benchmarks_scaling_{device}.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    written.append(name)
    return written


# ---------------------------------------------------------------- page

INTRO = """# Benchmarks

Generated by `benchmarks/report.py` from pytest-benchmark JSON; do not edit by hand. Every
number below was measured in the runs listed here; speed-ups compare two cases of the
**same run** (same input, same machine state).

{runs}

{gpu_note}

Reproduce (CPU; the duration of each run is listed above; the second command runs the
opt-in `torch.compile` case). The JSON behind this page is kept in `benchmarks/runs/`.

    pytest benchmarks/ --benchmark-only --benchmark-json=results/bench-cpu.json
    pytest benchmarks/bench_retrieval.py --benchmark-only --compile -k compiled \\
        --benchmark-json=results/bench-cpu-compile.json
    python benchmarks/report.py results/bench-cpu.json results/bench-cpu-compile.json

## What is measured

- **Baseline**: `benchmarks/baselines.py`, a re-implementation of the official Res²CLIP code's
  visual-branch retrieval (`models/knn.py`, `test.py`): one image and one layer at a time,
  the radial table rebuilt per call, the full `N×M` similarity, sparsemax by sorting every
  row, a dense `(N×M)·(M×D)` product, then ℓ2-normalisation.
- **Fast path**: `resad_kit.ops.retrieve` with its defaults, all four layers in one call:
  each layer's similarity GEMM writes its block directly and the radial penalty of the
  `K`-shot bank is subtracted as one `N×N` table per shot; the exact sparsemax support comes
  from `k="auto"`: every row is screened by block maxima (two levels of maxima of 8 entries;
  the sparsemax threshold of a subset of a row's entries is a lower bound of the row's
  threshold, so only blocks whose maximum reaches that bound can hold the support), and the
  few tens of entries above the bound are sorted; then one gather-and-sum over the support
  (`F.embedding_bag`) for all layers.
- **Correctness first**: every case checks its output against the baseline before it is
  timed (the baseline's own timed call produces the reference; float32: within 1e-6;
  bfloat16 inputs: within 2e-3 for the retrieved features and 4e-3 for the weights, a
  bfloat16 step near 1 being 7.8e-3). The sparsemax paths of `resad_kit` agree bit for bit
  with each other (unit tests, and the "first pass" cases below).
- **Inputs**: synthetic patch features (`benchmarks/synthetic.py`: a spatially smooth random
  field, a shared direction, per-image noise and shifts), because no pretrained CLIP weights
  are available offline. They give supports of a few tens of entries, as the paper describes;
  the tables list the measured supports. Costs that depend on the support (the screen, the
  aggregation) would change with real features; the GEMM and the full sort do not.
- **Timing**: pytest-benchmark's pedantic mode, 1–5 rounds per case (one round for the
  official path at K = 8 and 16, which takes seconds), CUDA-synchronised on GPU. Tables show
  the **median** over the rounds, for the baseline and the fast path alike. The key cases
  (K = 4) are also run with the two paths **alternating round by round**, so that both see
  the same machine load; the median of their per-round ratios is the first figure of the
  targets table.
- **Peak memory**: the working memory of a call in steady state (a warm-up call first, so
  buffers that the BLAS library keeps between calls are not counted; the measured call is the
  timed one): on CPU the peak resident set size (`VmHWM`) above the resident size before the
  call, reset before the call with `malloc_trim` and `/proc/self/clear_refs`; on CUDA
  `torch.cuda.max_memory_allocated`. The scaling cases pass a bank normalised once per class
  (`normalize="query"`), as the method does.
"""

NOTES = """## Notes

- **Where the time goes.** Both paths compute the same similarity GEMM (`N·M·D`
  multiply-adds per layer; its rate is in the lower-bound line above); no exact method can
  skip it. The official path adds a full sort of every row (the sparsemax table) and a dense
  `(N×M)·(M×D)` product (the aggregation table); the fast path adds one pass over the
  similarity block (the block maxima), work on a few hundred entries per row and a
  gather-and-sum over the support. The end-to-end speed-up is therefore capped by the
  official time over the GEMM time, and the margin grows with K (more columns to sort and
  to multiply densely).
{verdict}
- **Shared machine.** These runs were made on a shared virtual machine: the load averages
  above show that other jobs ran alongside, so timings vary from run to run. The
  alternating rounds give both paths the same conditions; absolute times are only
  indicative.
- **Alternatives not kept.** Michelot's fixed point and bisection are exact too, but each of
  their iterations touches all `M` entries of every row, and they need several, so both stay
  far behind. The top-k start (the largest 64 entries of every row, then a wider pass for
  rows whose support fills them; the previous default) is kept for banks of fewer than 2,048
  entries and as the screen's fallback; the "first pass" table compares them. `sparsemax()`
  keeps `k=None` (the full sort) as its default, as the architecture specifies; pass
  `k="auto"` for the fast path.
- **Memory.** `chunk_size` bounds the similarity block at `chunk_size × M`; by default
  (`chunk_size=None`) a block holds about 2²³ similarities (32 MiB), or 1,024 rows where `M`
  is too large for that (every block's GEMM reads the whole bank, so a block needs rows
  enough to pay for it), made of whole images and layers where one fits in twice that.
  32 MiB is the largest block that glibc's allocator recycles by default (larger ones are
  mapped afresh, page by page, on every call). One block for all rows (`all` in the size
  table) is quadratic in `N`; the default grows with `M` (1,024 rows × `M` for large banks:
  the K table); a block budget (`budget`: `chunk_size ≈ 2²⁴ / M`) keeps the peak flat.
  What remains grows linearly with `N` whatever the chunking: the normalised query and the
  `(N, D)` output (and, with the default `normalize=True`, a normalised copy of the bank,
  which `normalize="query"` avoids). Resident-memory peaks move by a few tens of MiB
  between runs (the C allocator's and the BLAS library's own buffers), so compare the trends
  rather than single values.
- **torch.compile** (`retrieve(..., compile=True)`) compiles the similarity and the weight
  computation, and falls back to eager code when compilation is unavailable. It is off by
  default: on CPU the GEMM, which compilation does not change, dominates, so there is
  little to gain and a compilation to pay.
- **Pipeline supports.** With random backbone weights the bank built from the test image's
  own features gives supports of a few entries; with real features they are tens (the
  synthetic benchmarks). The retrieval time barely depends on it (the screen's full pass and
  the GEMM do not depend on the support; the rest is a few milliseconds).
"""


def verdict(cases: Cases) -> str:
    """The note on the 4× target of ``retrieve`` at K = 4, from the CPU cases."""
    pair = cases.find(kernel="retrieve_paired", device="cpu")
    floor = cases.time(kernel="floor", impl="gemm", shots=4, device="cpu")
    match = {"kernel": "retrieve", "shots": 4, "dim": 768, "dtype": "float32", "device": "cpu"}
    base, fast = cases.time(impl="official", **match), cases.time(impl="fast", **match)
    if pair is None or floor is None or base is None or fast is None:
        return ""
    paired, separate = pair.get("paired_ratio"), base / fast
    cap = pair.get("baseline_s") / floor
    if min(paired, separate) >= 4:
        met = "The 4× target is met both with the paths alternating and in separate cases."
    elif max(paired, separate) >= 4:
        met = (
            "The 4× target is therefore met in one measurement and missed in the other: on "
            "this machine it is **not robustly met**."
        )
    else:
        met = "The 4× target is **not met** on this machine."
    return (
        f"- **The 4× target (`retrieve`, K = 4).** On this 2-core CPU the four GEMMs take "
        f"{ms(floor)} ms, which caps any exact retrieval at {cap:.1f}× the official path; the "
        f"fast path measured {paired:.2f}× with the paths alternating (fast "
        f"{ms(pair.get('fast_s'))} ms, official {ms(pair.get('baseline_s'))} ms) and "
        f"{separate:.2f}× in separate cases (fast {ms(fast)} ms, official {ms(base)} ms). {met} "
        f"The rest of the fast path ({ms(pair.get('fast_s') - floor)} ms with the paths "
        f"alternating) is the screen, the gather-and-sum and the passes over the inputs; the "
        f"margin grows with K (see the K sweep)."
    )


def render(runs: Sequence[Run], out_dir: Path) -> str:
    cases = Cases([c for run in runs for c in run.cases])
    has_gpu = any(c.get("device", "").startswith("cuda") for c in cases.cases)
    gpu_note = (
        "GPU figures are in the CUDA sections below."
        if has_gpu
        else "**No GPU was available** for these runs, so the GPU rows are absent (per-image "
        "retrieval time and images per second on a GPU are still to be measured). The suite has "
        "the CUDA cases (they skip without a device); run it on a GPU machine and pass both JSON "
        "files to `report.py`."
    )
    page = [INTRO.format(runs=header(runs), gpu_note=gpu_note)]
    for device in cases.devices():
        title = "CPU" if device == "cpu" else f"GPU ({device})"
        images = plots(cases, device, out_dir)
        page.append(f"## Results: {title}\n\n### Targets of issue 7\n\n{summary(cases, device)}")
        page.append(
            "### Sparsemax\n\nOne layer's `(N, K·N)` penalised similarities, N = 1,369. "
            f"Dense output in both.\n\n{sparsemax_section(cases, device)}\n\n"
            f"![sparsemax time vs K]({images[0]})"
        )
        page.append(
            "### Aggregation (Eq. 34)\n\nThe same sparse weights, as the dense `N×M` matrix "
            f"or as the support.\n\n{aggregation_section(cases, device)}\n\n"
            f"![aggregation time vs K]({images[1]})"
        )
        page.append(
            "### `retrieve` end to end\n\nOne 518 px test image, four layers (Eq. 8, 33, 34 and "
            f"the normalisation).\n\n{retrieve_section(cases, device)}\n\n"
            f"![retrieve time vs K]({images[2]})"
        )
        page.append(
            "### One full prediction (ViT-L/14-336, 518 px, K = 4)\n\nRandom weights (same "
            "compute as the OpenAI weights); random text direction; the bank is built from "
            "noisy, shifted copies of the test image's features (see "
            "`benchmarks/bench_pipeline.py`).\n\n" + pipeline_section(cases, device)
        )
        page.append(f"### Scaling\n\n{scaling_section(cases, device)}\n\n![scaling]({images[3]})")
        page.append(f"### torch.compile\n\n{compiled_section(cases, device)}")
    page.append(NOTES.format(verdict=verdict(cases)))
    return "\n\n".join(page).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON file(s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    runs = load(args.json)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(runs, args.out.parent))
    print(f"wrote {args.out} from {sum(len(r.cases) for r in runs)} cases")


if __name__ == "__main__":
    main()
