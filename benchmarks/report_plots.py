"""The plots of :mod:`report` (matplotlib, from the ``bench`` extra): time against K for
sparsemax, aggregation and ``retrieve``, and the scaling of time and peak memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from report_data import Cases

__all__ = ["plot_names", "plots"]

_KERNELS = ("sparsemax", "aggregation", "retrieve", "scaling")


def plot_names(device: str) -> list[str]:
    """The file names of the plots of ``device``, in the order :func:`plots` writes them."""
    return [f"benchmarks_{kernel}_{device}.png" for kernel in _KERNELS]


def _log_ticks(ax: Any, xs: Sequence[int]) -> None:
    """Log-log axes labelled in plain numbers: x at the measured points, y at 1-2-5 steps."""
    from matplotlib.ticker import LogLocator, NullLocator, StrMethodFormatter

    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(list(xs), labels=[f"{x:,}" for x in xs])
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.yaxis.set_minor_locator(NullLocator())


def plots(cases: Cases, device: str, out_dir: Path) -> list[str]:
    """Draw the plots of ``device`` into ``out_dir``; returns their :func:`plot_names`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = dict(zip(_KERNELS, plot_names(device), strict=True))
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
        name = names[kernel]
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
    name = names["scaling"]
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    written.append(name)
    return written
