"""``resad-kit reproduce``: the profiles, and the data sets found, planned and checked.

Part of :mod:`resad_kit.cli.reproduce`, which re-exports these names.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from resad_kit.cli._common import UsageError
from resad_kit.cli.registry import METHODS
from resad_kit.cli.reproduce_args import dataset_keys
from resad_kit.clip import BackboneConfig, ClipBackbone
from resad_kit.data import AnomalyDataset, find_categories, standard_categories, synthesize_dataset
from resad_kit.engine.distributed import DistContext, barrier
from resad_kit.engine.protocol import DatasetSpec
from resad_kit.engine.training import AUXILIARY_DATASET
from resad_kit.methods import Res2CLIPConfig
from resad_kit.metrics import MetricConfig

__all__ = [
    "FOLDERS", "PROFILES", "SAMPLE_ROOT", "SYNTHETIC", "Profile", "auxiliary", "discover",
    "find_dataset", "plan", "released_weights", "training_sets",
]  # fmt: skip

# The real MVTec AD sample shipped in the repository (examples/data/mvtec_mini).
SAMPLE_ROOT = Path(__file__).resolve().parents[2] / "examples" / "data" / "mvtec_mini"
# Folder names under --data-root that hold each data set (first match wins).
FOLDERS = {
    "mvtec": ("mvtec", "mvtec_ad", "mvtec_anomaly_detection", "MVTec-AD", "MVTec"),
    "visa": ("visa", "VisA", "VisA_20220922"),
    "btad": ("btad", "BTAD", "BTech_Dataset_transformed"),
    "mpdd": ("mpdd", "MPDD"),
    "dtd": ("dtd", "DTD-Synthetic", "dtd_synthetic", "DTD_Synthetic"),
    "dagm": ("dagm", "DAGM", "DAGM_KaggleUpload", "dagm2007"),
}
# The medical sets of AF-CLIP's Table 1: one category each, the set's own folder, directly
# under --data-root or under --data-root/medical (the data root is the folder holding it).
MEDICAL = ("brainmri", "br35h", "isic", "clinicdb", "colondb", "kvasir")
# Offline data (no --data-root): each trains the adapters evaluated on the other.
OFFLINE_AUXILIARY = {"sample": "synthetic", "synthetic": "sample"}
# Which released AF-CLIP model (trained on "mvtec" or "visa") stands for the model trained
# on each auxiliary data set: offline, the shipped MVTec AD sample is evaluated as MVTec AD
# (with the VisA-trained files) and the synthetic set as any other data set.
RELEASED = {"mvtec": "mvtec", "visa": "visa", "sample": "mvtec", "synthetic": "visa"}
SYNTHETIC = {"categories": ["brick", "coins"], "n_train": 6, "n_test": 8, "image_size": 128}


@dataclasses.dataclass(frozen=True)
class Profile:
    """Every setting that ``--profile`` selects, each taken from a library preset.

    Attributes:
        backbone: the backbone preset (``BackboneConfig.paper()`` / ``.official_code()``).
        method: the Res2CLIP preset by mode (``Res2CLIPConfig.paper`` / ``.official_code``).
        metrics: the metric preset (``MetricConfig.exact()`` / ``.official_code()``).
        mask_interpolation: how the training and test masks are resized
            (``AnomalyDataset``): nearest neighbour, or the official code's bilinear resize
            thresholded at 0.5.
        self_reference: a training category with a single normal image uses it as its own
            reference (``TrainConfig.self_reference``, the official code's fallback, with a
            logged warning) instead of stopping with a usage error.
    """

    backbone: BackboneConfig
    method: Callable[..., Res2CLIPConfig]
    metrics: MetricConfig
    mask_interpolation: str
    self_reference: bool


PROFILES = {
    "paper": Profile(
        BackboneConfig.paper(), Res2CLIPConfig.paper, MetricConfig.exact(), "nearest", False
    ),
    "official": Profile(
        BackboneConfig.official_code(),
        Res2CLIPConfig.official_code,
        MetricConfig.official_code(),
        "bilinear",
        True,
    ),
}


def find_dataset(root: Path, key: str) -> Path | None:
    """The folder under ``root`` that holds data set ``key`` (:data:`FOLDERS`; a medical
    set: the folder that holds its own folder, see :data:`MEDICAL`), if any."""
    if key in MEDICAL:
        (folder,) = standard_categories(key)
        return next((r for r in (root, root / "medical") if (r / folder).is_dir()), None)
    for name in FOLDERS[key]:
        if (root / name).is_dir():
            return root / name
    return None


def discover(args: argparse.Namespace, out: Path, dist: DistContext) -> dict[str, DatasetSpec]:
    """The data sets to use, by key: under --data-root, or the offline sample + synthetic.

    The synthetic data set is generated under ``out/data/synthetic`` by the main rank, or
    reused when complete (a partial one, from an interrupted run, is regenerated).
    """
    if args.data_root is None:
        if not SAMPLE_ROOT.is_dir():
            raise UsageError(
                f"the offline sample ({SAMPLE_ROOT}) ships with the repository's examples/; "
                "run from a clone or pass --data-root"
            )
        synthetic = out / "data" / "synthetic"
        if dist.is_main:
            synthesize_dataset(synthetic, **SYNTHETIC, seed=0, reuse=True)
        barrier(dist)  # the other ranks read what rank 0 wrote
        return {
            "sample": DatasetSpec("sample", SAMPLE_ROOT, ("hazelnut", "transistor")),
            "synthetic": DatasetSpec("synthetic", synthetic, tuple(SYNTHETIC["categories"])),
        }
    specs = {}
    for key in dataset_keys(args):
        root = find_dataset(args.data_root, key)
        if root is None:
            continue
        wanted = standard_categories(key)
        found = set(find_categories(root))
        missing = [c for c in wanted if c not in found]
        if missing and not args.allow_subset:
            raise UsageError(
                f"{key} at {root} lacks the categories {missing}; complete the download or "
                "pass --allow-subset (the averages are then not comparable to the paper)"
            )
        present = tuple(c for c in wanted if c in found)
        if present:
            specs[key] = DatasetSpec(key, root, present)
    if not specs:
        names = {k: v[0] for k, v in FOLDERS.items() if k in dataset_keys(args)}
        raise UsageError(
            f"no data set found under {args.data_root}; expected folders such as {names}"
        )
    return specs


def auxiliary(key: str) -> str:
    """The data set whose test split trains the adapters evaluated on ``key``: VisA for
    MVTec AD, MVTec AD for every other data set (AF-CLIP's further sets included)."""
    return OFFLINE_AUXILIARY.get(key) or AUXILIARY_DATASET.get(key, "mvtec")


def released_weights(weight_dir: Path, aux: str) -> tuple[str, str]:
    """``(adaptor, prompt)`` released AF-CLIP files standing for the model trained on
    ``aux`` (:data:`RELEASED`; :func:`resad_kit.engine.checkpoint_afclip.official_weight_files`)."""
    from resad_kit.engine.checkpoint_afclip import official_weight_files

    return official_weight_files(weight_dir, RELEASED[aux])


def _normals(spec: DatasetSpec, category: str, split: str) -> int:
    """Number of normal images of one split (the file list only; no image is read)."""
    return AnomalyDataset(spec.root, category, split, 8).labels.count(0)


def plan(
    args: argparse.Namespace, specs: dict[str, DatasetSpec]
) -> tuple[list[str], list[str], list[str]]:
    """The targets, the modes and the auxiliary data sets to train on, checked.

    Raises:
        UsageError: an unknown or missing data set, a missing auxiliary data set, a
            category with fewer normal training images than the largest ``--shots``, an
            auxiliary category with fewer than two normal test images, a category without
            captions (a per-category method), or a data set that cannot be read (the
            reader's message).
    """
    entry = METHODS[args.method]
    found = list(specs)  # default: every data set found (the method's paper's, if it says)
    if args.data_root is not None and entry.datasets is not None:
        found = [key for key in specs if key in entry.datasets]
        if not found and args.datasets is None:
            raise UsageError(
                f"--method {args.method} evaluates {list(entry.datasets)} by default; none is "
                f"under --data-root (found {sorted(specs)}; choose with --datasets)"
            )
    targets = args.datasets or found
    unknown = [t for t in targets if t not in specs]
    if unknown:
        raise UsageError(f"--datasets {unknown} not found; available: {sorted(specs)}")
    modes = {"training-free": ["training_free"], "fine-tune": ["fine_tuned"]}.get(
        args.mode or "both", ["training_free", "fine_tuned"]
    )
    modes = [m for m in modes if m in entry.modes]
    released = getattr(args, "afclip_weights", None)
    auxes: list[str] = []
    if entry.per_category:  # trained on its shots: no auxiliary data set; captions needed
        from resad_kit.cli.reproduce_finegrainedad import check_captions

        check_captions(args, [specs[t] for t in targets])
    elif "fine_tuned" in modes:
        for target in targets:
            aux = auxiliary(target)
            if released is not None:  # no training: the released files stand for it
                for path in released_weights(released, aux):
                    if not Path(path).is_file():
                        raise UsageError(
                            f"--afclip-weights: {path} is missing (the released model for "
                            f"{target}; see docs/reproducing.md)"
                        )
            elif aux not in specs:
                raise UsageError(
                    f"fine-tuning for {target} needs its auxiliary data set {aux!r} under "
                    f"--data-root (paper Sec. 4.1); add it or use --mode training-free"
                )
            if aux not in auxes:
                auxes.append(aux)
    profile = PROFILES[args.profile]
    # each training query's reference is another normal image (Res²CLIP's training)
    for aux in auxes if entry.training_references and released is None else ():
        spec = specs[aux]
        for category in spec.categories:
            normals = _normals(spec, category, "test")
            if normals == 1 and profile.self_reference:
                continue  # the official code's fallback; train() logs a warning
            if normals < 2:
                raise UsageError(
                    f"training on {aux}/{category} needs at least two normal test images "
                    f"(each query's reference is another normal image); it has {normals}"
                    + (" (--profile official uses a single one as its own)" if normals else "")
                )
    k = max(args.shots)
    for target in targets:
        spec = specs[target]
        for category in spec.categories:
            _normals(spec, category, "test")  # reads its file list: a missing mask stops here
            if k == 0:  # zero-shot: no train split is read (segmentation-only sets have none)
                continue
            normals = _normals(spec, category, "train")
            if normals < k:
                raise UsageError(
                    f"--shots {k} needs {k} normal training images, but {target}/{category} "
                    f"has {normals}"
                )
    return targets, modes, auxes


def training_sets(
    spec: DatasetSpec, backbone: ClipBackbone, profile: Profile
) -> list[AnomalyDataset]:
    """The auxiliary data set's test split, one data set per category, with the profile's
    mask resize (official: bilinear + threshold 0.5, as the official code)."""
    return [
        AnomalyDataset(
            spec.root,
            c,
            "test",
            backbone.image_size,
            mean=backbone.mean,
            std=backbone.std,
            mask_interpolation=profile.mask_interpolation,
        )
        for c in spec.categories
    ]
