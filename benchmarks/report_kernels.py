"""The kernel sections of :mod:`report`: sparsemax (Eq. 33), aggregation (Eq. 34) and
``retrieve`` end to end, each fast path against the official baseline of the same run.
"""

from __future__ import annotations

from report_data import Cases
from report_format import ms, ratio, support_range, table

__all__ = ["aggregation_section", "retrieve_section", "sparsemax_section"]


def sparsemax_section(cases: Cases, device: str) -> str:
    """Official sort vs ``k="auto"`` per K, the first-pass table and all exact algorithms
    at K = 4; a K whose official or fast case is missing is left out."""
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
                support_range(base),
                ms(base.seconds),
                ms(fast.seconds),
                ratio(base.seconds, fast.seconds),
            )
        )
    out = [
        table(
            (
                "K",
                "M",
                "support min / median / max",
                "official sort (ms)",
                '`k="auto"` (ms)',
                "speed-up",
            ),
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
    """Dense ``bmm`` vs ``embedding_bag`` per D and K (pairs with a missing case left out)."""
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
                    support_range(sparse),
                    ms(dense.seconds),
                    ms(sparse.seconds),
                    ratio(dense.seconds, sparse.seconds),
                )
            )
    return table(
        (
            "K",
            "D",
            "support min / median / max",
            "dense `bmm` (ms)",
            "`embedding_bag` (ms)",
            "speed-up",
        ),
        rows,
    )


def retrieve_section(cases: Cases, device: str) -> str:
    """``retrieve`` vs the official path per K, D and dtype; the alternating cases; the GEMM
    lower bound; batched test images. Parts whose cases are missing are left out."""
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
            fast = cases.find(impl=impl, **match)
            if fast is None:
                continue
            label = "`retrieve`" if impl == "fast" else "`retrieve`, `chunk_size=256`"
            row = (ms(base), ms(fast.seconds), ratio(base, fast.seconds))
            rows.append((shots, dim, dtype, support_range(fast), label, *row))
    headers = ("K", "D", "input", "support min / median / max", "fast path", "official (ms)")
    out = [table((*headers, "fast (ms)", "speed-up"), rows)]
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
