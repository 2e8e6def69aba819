"""A short tour of resad_kit's primitives on real images, without CLIP.

Raw pixel patches stand in for CLIP patch features: each image is cut into an h×w grid of
patches, every patch becomes a feature vector, and the few-shot pipeline of Res²CLIP's visual
branch runs on them: radial-penalty sparsemax retrieval from a K-shot memory bank (Eq. 8,
33–34), visual residuals (Sec. 3.2.3), magnitude maps (Eq. 9), bilinear upsampling, Gaussian
smoothing and the top-1 % image score.

This is a demonstration of the primitives, not Res²CLIP (no CLIP features, no text branch):
its numbers say nothing about the method's accuracy. By default it reads the MVTec AD
"hazelnut" sample shipped in the repository (``examples/data/mvtec_mini``); with
``--synthetic`` (or when that folder is missing) it draws a synthetic texture with defects.

    python examples/primitives_demo.py [--root PATH] [--category hazelnut] [--shots 4]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from skimage import io, transform

from resad_kit.ops import (
    gaussian_blur,
    magnitude_score,
    radial_distance,
    retrieve,
    top_fraction_mean,
    upsample_patches,
    visual_residual,
)

log = logging.getLogger("primitives_demo")
DEFAULT_ROOT = Path(__file__).resolve().parent / "data" / "mvtec_mini"


def load_image(path: Path, size: int) -> torch.Tensor:
    """RGB image as a (3, size, size) float tensor in [0, 1] (squash resize)."""
    image = io.imread(path)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = transform.resize(image[..., :3], (size, size), anti_aliasing=True)
    return torch.from_numpy(image).float().permute(2, 0, 1)


def load_mask(path: Path | None, size: int) -> torch.Tensor:
    """Binary (size, size) mask; all zeros when there is none (a normal image)."""
    if path is None:
        return torch.zeros(size, size, dtype=torch.bool)
    mask = io.imread(path)
    mask = transform.resize(mask.astype(np.float32), (size, size), order=0)
    return torch.from_numpy(mask > 0)


def patch_features(image: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, D) features: each patch's pixels with its mean removed, plus its mean colour."""
    patches = rearrange(image, "c (h p) (w q) -> (h w) (c p q)", p=patch, q=patch)
    colour = rearrange(image, "c (h p) (w q) -> (h w) c (p q)", p=patch, q=patch).mean(-1)
    return torch.cat([patches - patches.mean(-1, keepdim=True), colour], dim=-1)


def mvtec_items(root: Path, category: str, shots: int):
    """K reference images and the test items (path, defect, mask path) of an MVTec folder."""
    base = root / category
    references = sorted((base / "train" / "good").glob("*.png"))[:shots]
    if len(references) < shots:
        raise FileNotFoundError(f"need {shots} images in {base / 'train' / 'good'}")
    tests = []
    for folder in sorted((base / "test").iterdir()):
        for path in sorted(folder.glob("*.png")):
            mask = None
            if folder.name != "good":
                mask = base / "ground_truth" / folder.name / f"{path.stem}_mask.png"
            tests.append((path, folder.name, mask))
    return references, tests


def synthetic_images(size: int, shots: int, seed: int):
    """A smooth random texture, K noisy copies as references, and defective test copies."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=size, mode="bicubic")[0]

    def noisy():
        return (base + 0.02 * torch.randn(base.shape, generator=g)).clamp(0, 1)

    references = [noisy() for _ in range(shots)]
    tests = [(noisy(), "good", torch.zeros(size, size, dtype=torch.bool)) for _ in range(3)]
    for i in range(3):
        image, mask = noisy(), torch.zeros(size, size, dtype=torch.bool)
        y, x = (int(v) for v in torch.randint(8, size - 24, (2,), generator=g))
        mask[y : y + 16, x : x + 16] = True
        image[:, mask] = torch.rand(3, 1, generator=g)  # a flat colour blot
        tests.append((image, f"blot{i}", mask))
    return references, tests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="MVTec-layout folder")
    parser.add_argument("--category", default="hazelnut")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--patch", type=int, default=8, help="patch side in pixels")
    parser.add_argument("--gamma", type=float, default=0.01, help="radial penalty γ")
    parser.add_argument("--synthetic", action="store_true", help="use a synthetic texture")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)

    if args.synthetic or not (args.root / args.category).is_dir():
        if not args.synthetic:
            log.info("%s not found: using a synthetic texture instead", args.root / args.category)
        references, tests = synthetic_images(args.size, args.shots, args.seed)
        source = "synthetic texture"
    else:
        ref_paths, items = mvtec_items(args.root, args.category, args.shots)
        references = [load_image(p, args.size) for p in ref_paths]
        tests = [(load_image(p, args.size), d, load_mask(m, args.size)) for p, d, m in items]
        source = f"{args.root / args.category} (real MVTec AD sample, 256 px)"

    h = w = args.size // args.patch
    radius = radial_distance(h, w)
    bank = torch.cat([patch_features(image, args.patch) for image in references])  # (K·N, D)

    print(f"resad_kit primitives demo: {source}")
    print("features: raw pixel patches (a stand-in for CLIP; not Res²CLIP, not a benchmark)")
    print(f"grid {h}x{w}, K={args.shots} shots, bank {tuple(bank.shape)}, γ={args.gamma}\n")
    print(f"{'image':<8} {'type':<14} {'score':>7} {'support':>8} {'top-1% px in mask':>18}")
    scores, labels = [], []
    for i, (image, defect, mask) in enumerate(tests):
        query = patch_features(image, args.patch)
        found = retrieve(
            query,
            bank,
            query_radius=radius,
            bank_radius=radius.repeat(args.shots),
            gamma=args.gamma,
        )
        patch_map = magnitude_score(visual_residual(query, found.reference))  # (N,) Eq. 9
        pixel_map = gaussian_blur(upsample_patches(patch_map[None], args.size))[0]
        score = float(top_fraction_mean(pixel_map[None])[0])
        support = found.weights.support_size().float().mean().item()
        inside = "-"
        if mask.any():
            k = max(1, int(0.01 * pixel_map.numel()))
            top = pixel_map.flatten().topk(k).indices
            inside = f"{mask.flatten()[top].float().mean().item():.0%}"
        scores.append(score)
        labels.append(bool(mask.any()))
        print(f"{i:<8} {defect:<14} {score:7.3f} {support:8.1f} {inside:>18}")

    s, y = np.array(scores), np.array(labels)
    if y.any() and not y.all():
        pairs = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        print(f"\nimage-level AUROC over these {len(s)} images: {pairs.mean():.3f}")


if __name__ == "__main__":
    main()
