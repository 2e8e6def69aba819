"""WinCLIP's window embeddings of one 240 px image: batched vs one forward per window.

:func:`resad_kit.clip.windows.encode_windows` embeds all windows of a size in one
transformer forward (``W_s`` sequences of ``1 + s²`` tokens, attention within each
window). The baseline is the loop a direct reading of the method gives: for every window,
its CLS + patch tokens (the same token map, computed once) through ``ln_pre``, open_clip's
``transformer``, ``ln_post`` and ``proj``, one ``(1, 1 + s², C)`` forward per window (196
of 2×2 and 169 of 3×3 on the 15×15 grid: 365 forwards).

The backbone has random weights (no download; the compute is the same as with the
``laion400m_e31`` weights):

* ``vit-b-16-plus`` (default): ViT-B-16-plus-240's image tower (width 896, 12 blocks of 14
  heads of 64, patch 16, ``D = 640``);
* ``narrow`` (``--narrow``): the same depth, patch and grid at width 256 (4 heads), a
  quicker stand-in.

The two paths are first checked against each other (window embeddings within ``1e-4``),
then timed alternating round by round (median of the rounds, same process); the ratio is
printed. Run: ``python benchmarks/bench_windows.py [--narrow] [--rounds N]`` or
``pytest benchmarks/bench_windows.py -s``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import open_clip
import torch
from einops import rearrange

from resad_kit.clip import BackboneConfig, ClipBackbone
from resad_kit.clip.windows import encode_windows

SCALES = (2, 3)
IMAGE_SIZE = 240
SHAPES = {
    "vit-b-16-plus": {"width": 896, "heads_width": 64, "embed_dim": 640},
    "narrow": {"width": 256, "heads_width": 64, "embed_dim": 256},
}


def build_backbone(shape: str = "vit-b-16-plus", seed: int = 0) -> ClipBackbone:
    """A ViT-B-16-plus-240-shaped CLIP with random weights (tiny text tower: unused here)."""
    s = SHAPES[shape]
    vision = open_clip.model.CLIPVisionCfg(
        layers=12, width=s["width"], head_width=s["heads_width"], patch_size=16,
        image_size=IMAGE_SIZE,
    )  # fmt: skip
    text = open_clip.model.CLIPTextCfg(context_length=77, width=64, heads=1, layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(s["embed_dim"], vision, text)
    config = BackboneConfig(image_size=IMAGE_SIZE, layers=(12,), vv_blocks=0, global_ln_post=True)
    return ClipBackbone(model, config, model_name=f"{shape}-random", trained=False)


@torch.inference_mode()
def loop_windows(backbone: ClipBackbone, image: torch.Tensor) -> list[torch.Tensor]:
    """The baseline: one transformer forward per window (token map computed once)."""
    visual = backbone.model.visual
    x = visual.conv1(image)
    h, w = x.shape[-2:]
    pos = backbone.pos_embed((h, w))
    tokens = rearrange(x, "1 c h w -> (h w) c") + pos[1:]
    cls = visual.class_embedding + pos[0]
    out = []
    for s in SCALES:
        rows = []
        for y0 in range(h - s + 1):
            for x0 in range(w - s + 1):
                keep = [(y0 + a) * w + x0 + b for a in range(s) for b in range(s)]
                seq = torch.cat([cls[None], tokens[keep]])[None]
                y = visual.ln_post(visual.transformer(visual.ln_pre(seq))[:, 0])
                rows.append(y @ visual.proj)
        out.append(torch.cat(rows)[None])
    return out


def batched_windows(backbone: ClipBackbone, image: torch.Tensor) -> list[torch.Tensor]:
    return list(encode_windows(backbone, image, SCALES).windows)


def _time(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(shape: str = "vit-b-16-plus", rounds: int = 3, device: str = "cpu") -> dict:
    """Check equal outputs, then time both paths alternating; returns the numbers."""
    backbone = build_backbone(shape).to(device)
    image = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    fast, slow = batched_windows(backbone, image), loop_windows(backbone, image)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert float((fast[0][0, 0] - fast[0][0, 1]).abs().max()) > 0  # windows differ
    batched, looped = [], []
    for _ in range(rounds):
        batched.append(_time(batched_windows, backbone, image))
        looped.append(_time(loop_windows, backbone, image))
    result = {
        "shape": shape,
        "device": device,
        "threads": torch.get_num_threads(),
        "windows": sum(f.shape[1] for f in fast),
        "batched_s": statistics.median(batched),
        "loop_s": statistics.median(looped),
    }
    result["ratio"] = result["loop_s"] / result["batched_s"]
    return result


def test_batched_windows_beat_the_loop():
    result = measure("narrow", rounds=2)
    print(result)
    assert result["ratio"] > 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--narrow", action="store_true", help="width-256 stand-in")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(measure("narrow" if args.narrow else "vit-b-16-plus", args.rounds, args.device))
