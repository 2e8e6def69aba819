"""The methods the ``resad-kit`` commands can run, by name (``--method``).

Each entry says how to build a model of one mode on a backbone, which backbone the method
needs (:class:`BackboneRecipe`), how it trains and which shots and seeds its paper reports;
the run does the rest (training through :func:`resad_kit.engine.train`, evaluation through
:func:`resad_kit.engine.run_evaluation`, prediction through ``fit_references`` and
``forward``), whatever the method. To add one, append a :class:`MethodEntry` to
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
    "METHODS", "BackboneRecipe", "MethodEntry", "build_method", "method_names",
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
    """

    model: str
    pretrained: str
    config: Callable[[str], BackboneConfig]
    patch: int
    tiny: dict[str, Any] = field(default_factory=dict)
    windows: bool = False


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


def _res2clip_train(**overrides: Any) -> TrainConfig:
    from resad_kit.engine.training import TrainConfig

    return TrainConfig.paper(**overrides)


def _afclip_train(**overrides: Any) -> TrainConfig:
    from resad_kit.engine.training import TrainConfig

    return TrainConfig.afclip(**overrides)


@dataclass(frozen=True)
class MethodEntry:
    """One method of the command line.

    Attributes:
        name: the ``--method`` value (the method's ``Method.name``).
        title: what the help text calls it.
        modes: the modes it has (``"training_free"``, ``"fine_tuned"``).
        build: ``(backbone, mode, profile) → Method``; ``profile`` is ``"paper"`` or
            ``"official"`` (``reproduce --profile``; ``predict`` uses ``"paper"``).
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
    """

    name: str
    title: str
    modes: tuple[str, ...]
    build: Callable[[ClipBackbone, str, str], Method]
    backbone: BackboneRecipe = RES2CLIP_BACKBONE
    train: Callable[..., TrainConfig] | None = _res2clip_train
    shots: tuple[int, ...] = (1, 2, 4)
    seeds: tuple[int, ...] = (111, 222, 333)
    zero_shot: bool = False
    official_metrics: bool = True
    predict: bool = True
    training_references: bool = True


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
}


def method_names(*, predict: bool = False) -> list[str]:
    """The ``--method`` choices (``predict=True``: those ``resad-kit predict`` offers)."""
    return [name for name, entry in METHODS.items() if entry.predict or not predict]


def build_method(name: str, backbone: ClipBackbone, mode: str, profile: str = "paper") -> Any:
    """A model of method ``name`` in ``mode`` on ``backbone``.

    Raises:
        ValueError: an unknown method, or a mode the method does not have.
    """
    if name not in METHODS:
        raise ValueError(f"--method {name!r} unknown; choose from {method_names()}")
    entry = METHODS[name]
    if mode not in entry.modes:
        raise ValueError(f"--method {name} has no mode {mode!r}; it has {list(entry.modes)}")
    return entry.build(backbone, mode, profile)
