"""Time the suite's main cases under two source trees, alternating, and report the ratios.

    git worktree add /tmp/resad_old b04bfa3
    python benchmarks/compare_revisions.py /tmp/resad_old . --rounds 7 --json out.json

For every case one worker process per tree (``PYTHONPATH`` pointing at the tree, the same
Python environment) builds the same inputs, then runs the case whenever the driver asks: the
driver alternates the two workers round by round (old, new, old, new, ...), so both see the
same machine load, checks that the two trees give the same output bit for bit
(``torch.equal``), and reports the median time of each and the median, min and max of the
per-round ratios ``new / old`` (below 1: the new tree is faster).

Cases (inputs of :mod:`synthetic`; the first three are pure ops, the last the whole method):

* ``retrieve``: ``retrieve`` on four layers, K = 4, D = 1,024, the default support case
  ``s150`` (median ≈ 150 entries per row), banks normalised once;
* ``sparsemax``: ``sparsemax(k="auto")`` of one layer's ``(N, K·N)`` similarities;
* ``sparsemax_sweep_s300``: the same on the ``s300`` features (the widest supports);
* ``pipeline``: one training-free ``Res2CLIP`` prediction (518 px, K = 4) on the narrow
  24-block backbone of :mod:`bench_end_to_end` (random weights, built with open_clip directly
  so that both trees build the same model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ("retrieve", "sparsemax", "sparsemax_s300", "pipeline")


# ---------------------------------------------------------------- worker side


def _case(name: str):
    """``fn`` of a case (a callable returning a tensor) under the tree on ``sys.path``."""
    import torch
    import torch.nn.functional as F
    from synthetic import SUPPORT_CASES, clip_like_features

    from resad_kit.ops import radial_distance, retrieve, sparsemax

    torch.manual_seed(0)
    r = radial_distance(37, 37)
    if name in ("retrieve", "sparsemax", "sparsemax_s300"):
        structure = SUPPORT_CASES["s300" if name.endswith("s300") else "s150"]
        layers = [clip_like_features(37, 4, 1024, structure, seed=i) for i in range(4)]
        queries = torch.stack([f.query for f in layers])
        banks = torch.stack([f.bank for f in layers])[:, None]
        if name == "retrieve":
            return lambda: (
                retrieve(
                    queries, banks, query_radius=r, bank_radius=r.repeat(4), normalize="query"
                ).reference
            )
        penalty = 0.01 * (r[:, None] - r.repeat(4)[None, :]).abs()
        sim = F.normalize(queries[0, 0], dim=-1) @ banks[0, 0].T - penalty
        return lambda: sparsemax(sim, dim=-1, k="auto")
    import open_clip
    from bench_end_to_end import IMAGE_SIZE, NARROW

    from resad_kit.clip import BackboneConfig, ClipBackbone
    from resad_kit.methods import Res2CLIP

    model = open_clip.CLIP(
        NARROW["embed_dim"], NARROW["vision_cfg"], NARROW["text_cfg"], quick_gelu=True
    )
    backbone = ClipBackbone(model, BackboneConfig(image_size=IMAGE_SIZE), trained=False)
    method = Res2CLIP(backbone)
    generator = torch.Generator().manual_seed(1)
    refs = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    query = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    method.fit_references(refs)
    return lambda: method(query).anomaly_map


def worker(name: str, out: str) -> None:
    """Set the case up, then run it once per ``run`` line on stdin, printing the seconds."""
    import torch

    with torch.no_grad():
        fn = _case(name)
        torch.save(fn(), out)  # also the warm-up call
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() != "run":
                break
            start = time.perf_counter()
            fn()
            print(time.perf_counter() - start, flush=True)


# ---------------------------------------------------------------- driver side


def _start(tree: Path, name: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{tree.resolve()}{os.pathsep}{HERE}"}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", name, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),  # never the repository: the tree comes from PYTHONPATH only
    )
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"worker {name} under {tree} failed to start")
    return proc


def _ask(proc: subprocess.Popen) -> float:
    proc.stdin.write("run\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def compare(old: Path, new: Path, name: str, rounds: int) -> dict[str, object]:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        outs = {"old": Path(tmp) / "old.pt", "new": Path(tmp) / "new.pt"}
        procs = {"old": _start(old, name, outs["old"]), "new": _start(new, name, outs["new"])}
        try:
            same = torch.load(outs["old"]), torch.load(outs["new"])
            if not torch.equal(*same):  # Res2CLIP's outputs must not change (issue 13)
                raise AssertionError(f"{name}: the two trees give different outputs")
            times: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(rounds):
                for tree in ("old", "new"):
                    times[tree].append(_ask(procs[tree]))
        finally:
            for proc in procs.values():
                proc.stdin.close()
                proc.wait(timeout=60)
    ratios = [n / o for o, n in zip(times["old"], times["new"], strict=True)]
    return {
        "case": name,
        "rounds": rounds,
        "old_s": statistics.median(times["old"]),
        "new_s": statistics.median(times["new"]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "identical": True,
    }


def _commit(tree: Path) -> str:
    """The tree's short commit, with ``+ uncommitted changes`` where ``resad_kit`` has any."""

    def git(*args: str) -> str:
        run = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True)
        return run.stdout.strip()

    dirty = git("status", "--porcelain", "--", "resad_kit")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, nargs="?", help="the older source tree (a worktree)")
    parser.add_argument("new", type=Path, nargs="?", help="the newer source tree")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return
    if args.old is None or args.new is None:
        parser.error("give the two source trees: OLD NEW")
    load_start = os.getloadavg()[0]
    results = [compare(args.old, args.new, name, args.rounds) for name in args.cases]
    report = {
        "old": _commit(args.old),
        "new": _commit(args.new),
        "date": time.strftime("%Y-%m-%d"),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
