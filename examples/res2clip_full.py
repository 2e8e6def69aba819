"""Reproduce Res²CLIP's few-shot evaluation (Tables 1, 6–10): training-free and fine-tuned.

A thin wrapper of ``resad-kit reproduce`` (:mod:`resad_kit.cli.reproduce`): the same flags,
checks and outputs. ``python examples/res2clip_full.py --help`` lists them.

Offline smoke run on the shipped real sample and a synthetic data set (written under
``--out/data/synthetic``), with a tiny *untrained* CLIP::

    python examples/res2clip_full.py --backbone tiny --out results/smoke

Full reproduction on a GPU (see docs/reproducing.md)::

    python examples/res2clip_full.py --data-root /data --checkpoint /weights/ViT-L-14-336px.pt

The same script runs the other methods of the command (one code path): AF-CLIP / AF-CLIP+
(its Tables 1–2) and the WinCLIP / WinCLIP+ baseline, offline here::

    python examples/res2clip_full.py --method afclip --backbone tiny --out results/afclip_smoke
    python examples/res2clip_full.py --method winclip --backbone tiny --out results/winclip_smoke
"""

from __future__ import annotations

from resad_kit.cli.reproduce import main

if __name__ == "__main__":
    raise SystemExit(main(prog="res2clip_full.py"))
