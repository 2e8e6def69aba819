"""The methods the ``resad-kit`` commands can run, by name (``--method``).

Each entry says how to build a model of one mode on a backbone, which backbone the method
needs (:class:`BackboneRecipe`), how it trains and which shots and seeds its paper reports;
the run does the rest (training through :func:`resad_kit.engine.train`, evaluation through
:func:`resad_kit.engine.run_evaluation`, prediction through ``fit_references`` and
``forward``), whatever the method. A method trained per category on its shots
(``per_category``, FineGrainedAD) runs through
:func:`~resad_kit.engine.finegrainedad_protocol.evaluate_finegrainedad` instead of the
training on an auxiliary data set. To add one, append a :class:`MethodEntry` to
:data:`METHODS` (its builders import lazily, so that ``--help`` stays fast: this module
imports no torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resad_kit.clip import BackboneConfig, ClipBackbone
    from resad_kit.engine.training import TrainConfig
    from resad_kit.methods import Method

__all__ = [
    "METHODS", "BackboneRecipe", "MethodEntry", "build_method", "finegrainedad_config",
    "method_names",
]  # fmt: skip


def _res2clip_backbone(profile: str) -> BackboneConfig:
    from resad_kit.clip import BackboneConfig

    return BackboneConfig.official_code() if profile == "official" else BackboneConfig.paper()


def _afclip_backbone(profile: str) -> BackboneConfig:
    from resad_kit.clip import BackboneConfig

    return BackboneConfig.afclip()  # the same for both presets (AF-CLIP Sec. 3.2, 4.1)


def _winclip_backbone(profile: str) -> BackboneConfig:
    from resad_kit.methods import WinCLIPConfig

    return WinCLIPConfig.backbone_config()


def _finegrainedad_backbone(profile: str) -> BackboneConfig:
    from resad_kit.clip import BackboneConfig

    # 240 px (code: --img-resize 240); the method reads the model through its own two views
    # (V-V in all 12 blocks + LN_post on the global feature; ordinary stream of 2 blocks),
    # this config is the first of them (FineGrainedAD.__init__ replaces the rest).
    return BackboneConfig(image_size=240, layers=(12,), vv_blocks=12, global_ln_post=True)


@dataclass(frozen=True)
class BackboneRecipe:
    """The backbone a method runs on.

    Attributes:
        model: open_clip architecture name (``--backbone paper``).
        pretrained: open_clip pretrained tag, used without ``--checkpoint``.
        config: ``profile → BackboneConfig`` (image side: ``--image-size`` or its own).
        patch: patch side in pixels of ``model`` (``--image-size`` must be a multiple).
        tiny: overrides of :meth:`ClipBackbone.tiny <resad_kit.clip.ClipBackbone.tiny>`
            for ``--backbone tiny`` (the same tap mode as the real one).
        windows: wrap the backbone in :class:`~resad_kit.clip.windows.WindowBackbone`
            (WinCLIP's window embeddings through the feature cache).
        images: wrap the backbone in :class:`~resad_kit.clip.image_backbone.ImageBackbone`
            (the feature cache holds the images; FineGrainedAD reads the model itself).
    """

    model: str
    pretrained: str
    config: Callable[[str], BackboneConfig]
    patch: int
    tiny: dict[str, Any] = field(default_factory=dict)
    windows: bool = False
    images: bool = False


RES2CLIP_BACKBONE = BackboneRecipe("ViT-L-14-336", "openai", _res2clip_backbone, 14)
AFCLIP_BACKBONE = BackboneRecipe(
    "ViT-L-14-336",
    "openai",
    _afclip_backbone,
    14,
    {"vv_blocks": 0, "tap_output": "residual", "tap_cls": True},
)
WINCLIP_BACKBONE = BackboneRecipe(
    "ViT-B-16-plus-240",
    "laion400m_e31",
    _winclip_backbone,
    16,
    {"vv_blocks": 0, "global_ln_post": True},
    windows=True,
)
# RetoFan233/FineGrainedAD, train_seg_finegrained_patch.py: --backbone ViT-B-16-plus-240,
# --pretrained_dataset laion400m_e32, --img-resize 240.
FINEGRAINEDAD_BACKBONE = BackboneRecipe(
    "ViT-B-16-plus-240",
    "laion400m_e32",
    _finegrainedad_backbone,
    16,
    {"layers": (4,), "vv_blocks": 4, "global_ln_post": True},
    images=True,
)


def _res2clip_train(**overrides: Any) -> TrainConfig:
    from resad_kit.engine.training import TrainConfig

    return TrainConfig.paper(**overrides)


def _afclip_train(**overrides: Any) -> TrainConfig:
    from resad_kit.engine.training import TrainConfig

    return TrainConfig.afclip(**overrides)


def _finegrainedad_train(**overrides: Any) -> TrainConfig:
    from resad_kit.engine.training import TrainConfig

    return TrainConfig.finegrainedad(**overrides)


@dataclass(frozen=True)
class MethodEntry:
    """One method of the command line.

    Attributes:
        name: the ``--method`` value (the method's ``Method.name``).
        title: what the help text calls it.
        modes: the modes it has (``"training_free"``, ``"fine_tuned"``).
        build: ``(backbone, mode, profile) → Method``; ``profile`` is ``"paper"`` or
            ``"official"`` (``reproduce --profile``; ``predict`` uses ``"paper"``); a
            ``per_category`` method also takes ``category=`` and ``tiny=``.
        backbone: the backbone it runs on.
        train: ``(**overrides) → TrainConfig`` of its fine-tuned mode (``None``: none).
        shots: ``reproduce``'s default ``--shots`` (``0``: zero-shot).
        seeds: ``reproduce``'s default ``--seeds``.
        zero_shot: ``--shots 0`` is allowed (``Method.supports_zero_shot``).
        official_metrics: ``--profile official`` also selects the official Res²CLIP
            code's metric implementation (``MetricConfig.official_code()``); otherwise the
            metrics are exact for both profiles.
        predict: ``resad-kit predict`` offers it (it runs on Res²CLIP's backbone).
        training_references: its training pairs each query with normal references
            (``Method.uses_training_references`` of its class; a test checks they agree),
            so each auxiliary category needs two normal test images.
        per_category: one model per category (its captions), trained on every draw of
            shots, no auxiliary data set (FineGrainedAD): ``build`` takes the category as
            the keyword ``category`` (and ``tiny``), and ``reproduce`` runs
            :func:`~resad_kit.engine.finegrainedad_protocol.evaluate_finegrainedad`.
        tiny_config: overrides of the method's config for ``--backbone tiny`` (its 4
            blocks; FineGrainedAD's memory blocks 3 and 8 of 12 become 1 and 3).
        datasets: the data sets its paper reports, ``reproduce``'s default ``--datasets``
            under ``--data-root`` (``None``: every data set found).
        eval_size: ``reproduce``'s default ``--eval-size`` with ``--backbone paper``
            (``None``: the input side).
    """

    name: str
    title: str
    modes: tuple[str, ...]
    build: Callable[..., Method]
    backbone: BackboneRecipe = RES2CLIP_BACKBONE
    train: Callable[..., TrainConfig] | None = _res2clip_train
    shots: tuple[int, ...] = (1, 2, 4)
    seeds: tuple[int, ...] = (111, 222, 333)
    zero_shot: bool = False
    official_metrics: bool = True
    predict: bool = True
    training_references: bool = True
    per_category: bool = False
    tiny_config: dict[str, Any] = field(default_factory=dict)
    datasets: tuple[str, ...] | None = None
    eval_size: int | None = None


def _res2clip(backbone: ClipBackbone, mode: str, profile: str) -> Method:
    from resad_kit.methods import Res2CLIP, Res2CLIPConfig

    config = Res2CLIPConfig.official_code if profile == "official" else Res2CLIPConfig.paper
    return Res2CLIP(backbone, config(mode))


def _nearest_neighbor(backbone: ClipBackbone, mode: str, profile: str) -> Method:
    from resad_kit.methods import NearestNeighbor, NearestNeighborConfig

    return NearestNeighbor(
        backbone, NearestNeighborConfig.patchcore(trainable=mode == "fine_tuned")
    )


def _afclip(backbone: ClipBackbone, mode: str, profile: str) -> Method:
    from resad_kit.methods import AFCLIP, AFCLIPConfig

    config = AFCLIPConfig.official_code() if profile == "official" else AFCLIPConfig.paper()
    return AFCLIP(backbone, config)


def _winclip(backbone: ClipBackbone, mode: str, profile: str) -> Method:
    from resad_kit.methods import WinCLIP, WinCLIPConfig

    config = WinCLIPConfig.anomalib() if profile == "official" else WinCLIPConfig.paper()
    return WinCLIP(backbone, config)


def finegrainedad_config(profile: str, *, tiny: bool = False) -> Any:
    """FineGrainedAD's config of ``--profile``: ``FineGrainedADConfig.paper()`` or
    ``.official_code()`` (the released code), with the ``--backbone tiny`` overrides of
    its entry (``tiny_config``) when ``tiny``."""
    import dataclasses

    from resad_kit.methods import FineGrainedADConfig

    preset = (
        FineGrainedADConfig.official_code if profile == "official" else FineGrainedADConfig.paper
    )
    overrides = METHODS["finegrainedad"].tiny_config if tiny else {}
    return dataclasses.replace(preset(), **overrides)


def _finegrainedad(
    backbone: ClipBackbone, mode: str, profile: str, *, category: str, tiny: bool = False
) -> Method:
    from resad_kit.clip.image_backbone import ImageBackbone
    from resad_kit.clip.mfsc import load_captions
    from resad_kit.engine.finegrainedad_protocol import FewShotFineGrainedAD

    if not isinstance(backbone, ImageBackbone):
        backbone = ImageBackbone.wrap(backbone)
    config = finegrainedad_config(profile, tiny=tiny)
    return FewShotFineGrainedAD(backbone, load_captions(category), config, _finegrainedad_train())


METHODS: dict[str, MethodEntry] = {
    "res2clip": MethodEntry(
        "res2clip",
        "Res²CLIP (the paper's method; Res2CLIPConfig.paper / .official_code)",
        ("training_free", "fine_tuned"),
        _res2clip,
    ),
    "nearest_neighbor": MethodEntry(
        "nearest_neighbor",
        "a PatchCore-style nearest-neighbour bank (NearestNeighborConfig.patchcore; "
        "fine-tuned: a learnt projection)",
        ("training_free", "fine_tuned"),
        _nearest_neighbor,
    ),
    "afclip": MethodEntry(
        "afclip",
        "AF-CLIP (0 shots) / AF-CLIP+ (≥ 1 shot), Fang et al. 2025 (AFCLIPConfig.paper / "
        ".official_code; adapter and prompts trained with TrainConfig.afclip)",
        ("fine_tuned",),
        _afclip,
        backbone=AFCLIP_BACKBONE,
        train=_afclip_train,
        shots=(0, 1, 2, 4),
        seeds=(111, 222, 333, 444, 555),  # the paper's five runs (AF-CLIP Table 2)
        zero_shot=True,
        official_metrics=False,
        predict=False,
        training_references=False,
    ),
    "winclip": MethodEntry(
        "winclip",
        "WinCLIP (0 shots) / WinCLIP+ (≥ 1 shot), Jeong et al. 2023, training-free "
        "(WinCLIPConfig.paper / .anomalib for --profile official)",
        ("training_free",),
        _winclip,
        backbone=WINCLIP_BACKBONE,
        train=None,
        shots=(0, 1, 2, 4),
        zero_shot=True,
        official_metrics=False,
        predict=False,
    ),
    "finegrainedad": MethodEntry(
        "finegrainedad",
        "FineGrainedAD, Fan et al., trained per category on each draw of shots with its "
        "MFSC captions (FineGrainedADConfig.paper / .official_code; TrainConfig.finegrainedad)",
        ("fine_tuned",),
        _finegrainedad,
        backbone=FINEGRAINEDAD_BACKBONE,
        train=_finegrainedad_train,
        seeds=(111,),  # the released code's one run (--seed 111); the paper gives no std
        official_metrics=False,
        predict=False,
        training_references=False,
        per_category=True,
        tiny_config={"memory_layers": (1, 3)},
        datasets=("mvtec", "visa"),  # its Table 1 (Real-IAD has no loader here)
        eval_size=400,  # the code's --resolution 400
    ),
}


def method_names(*, predict: bool = False) -> list[str]:
    """The ``--method`` choices (``predict=True``: those ``resad-kit predict`` offers)."""
    return [name for name, entry in METHODS.items() if entry.predict or not predict]


def build_method(
    name: str, backbone: ClipBackbone, mode: str, profile: str = "paper", **per_category: Any
) -> Any:
    """A model of method ``name`` in ``mode`` on ``backbone``.

    ``per_category``: ``category=`` (and ``tiny=``) for a method of one category
    (``MethodEntry.per_category``).

    Raises:
        ValueError: an unknown method, a mode the method does not have, a per-category
            method without ``category``.
    """
    if name not in METHODS:
        raise ValueError(f"--method {name!r} unknown; choose from {method_names()}")
    entry = METHODS[name]
    if mode not in entry.modes:
        raise ValueError(f"--method {name} has no mode {mode!r}; it has {list(entry.modes)}")
    if entry.per_category and "category" not in per_category:
        raise ValueError(
            f"--method {name} builds one model per category (its captions); pass category="
        )
    return entry.build(backbone, mode, profile, **per_category)
