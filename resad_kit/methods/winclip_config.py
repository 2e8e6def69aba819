"""Settings of :class:`~resad_kit.methods.WinCLIP` and their sources.

Sources: the paper (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and
Segmentation", CVPR 2023) and the implementation most users know, anomalib's
``anomalib.models.image.winclip`` (``torch_model.py``, ``prompting.py``, ``utils.py``;
github.com/open-edge-platform/anomalib, read at commit b723368).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from resad_kit.clip import BackboneConfig
from resad_kit.clip.prompts import WINCLIP_TEMPLATES, PromptEnsemble

__all__ = ["WinCLIPConfig"]

PromptLists = Literal["anomalib", "paper"]


@dataclasses.dataclass(frozen=True)
class WinCLIPConfig:
    """Settings of :class:`~resad_kit.methods.WinCLIP` (WinCLIP zero-shot, WinCLIP+ few-shot).

    The backbone is the caller's: WinCLIP uses open_clip's ``ViT-B-16-plus-240`` with the
    LAION-400M weights ``laion400m_e31`` at 240 px (a 15×15 grid of 16 px patches; anomalib
    ``BACKBONE``/``PRETRAINED``), built with :meth:`backbone_config`. The window, image and
    patch embeddings (:func:`resad_kit.clip.windows.encode_windows`) use the blocks'
    ordinary attention whatever the backbone's V-V setting.

    Attributes:
        scales: window sides in patches (paper Sec. 3.3 and anomalib ``scales=(2, 3)``:
            2×2 and 3×3 windows, the "small" and "mid" scales; the image is the third).
        stride: window step in patches (anomalib ``make_masks(..., stride=1)``).
        temperature: τ of the two-class softmax ``softmax(cos(f, [g_n, g_a]) / τ)[a]``
            (paper Eq. 1; anomalib ``TEMPERATURE = 0.07``).
        class_name: the noun of the prompts (anomalib: the category name; the protocol
            passes no category, so a run uses this one name for every class).
        prompts: ``"anomalib"``: anomalib's word lists as they are (21 templates, one of
            them repeated); ``"paper"``: the repeated ``"a jpeg corrupted photo of the
            {}."`` (entries 8 and 9) read as the "a"/"the" pair every other template forms.
        normalize_before_mean: ℓ2-normalise each prompt embedding before averaging
            (anomalib ``_collect_text_embeddings``: no, the raw embeddings are averaged).
        patch_layer: block (1-based) whose patch tokens form WinCLIP+'s patch memory;
            ``None``: the last. anomalib sets ``clip.visual.output_tokens = True``, so its
            patch embeddings are ``ln_post`` of the last block's patch tokens, not
            projected (width 896 for ViT-B-16-plus-240) and without V-V attention.

    Example:
        >>> from resad_kit.methods import WinCLIPConfig
        >>> config = WinCLIPConfig.anomalib(class_name="bottle")
        >>> WinCLIPConfig.from_dict(config.to_dict()) == config, config.scales
        (True, (2, 3))
        >>> len(WinCLIPConfig.paper().prompt_ensemble().templates)
        21
    """

    scales: tuple[int, ...] = (2, 3)
    stride: int = 1
    temperature: float = 0.07
    class_name: str = "object"
    prompts: PromptLists = "anomalib"
    normalize_before_mean: bool = False
    patch_layer: int | None = None

    def __post_init__(self) -> None:
        fn = "WinCLIPConfig"
        scales = tuple(self.scales) if isinstance(self.scales, (tuple, list)) else ()
        if not scales or any(type(s) is not int or s < 1 for s in scales):
            raise ValueError(f"{fn}: `scales` must be a non-empty tuple of positive ints")
        if len(set(scales)) != len(scales):
            raise ValueError(f"{fn}: `scales` must not repeat a size; got {scales}")
        object.__setattr__(self, "scales", scales)
        if self.prompts not in ("anomalib", "paper"):
            raise ValueError(f"{fn}: `prompts` must be 'anomalib' or 'paper'")
        for name, ok in (
            ("stride", type(self.stride) is int and self.stride >= 1),
            (
                "temperature",
                isinstance(self.temperature, (int, float))
                and not isinstance(self.temperature, bool)
                and math.isfinite(self.temperature)
                and self.temperature > 0,
            ),
            ("class_name", isinstance(self.class_name, str) and bool(self.class_name.strip())),
            ("normalize_before_mean", isinstance(self.normalize_before_mean, bool)),
            (
                "patch_layer",
                self.patch_layer is None
                or (type(self.patch_layer) is int and self.patch_layer >= 1),
            ),
        ):
            if not ok:
                raise ValueError(f"{fn}: invalid `{name}`: {getattr(self, name)!r}")

    @classmethod
    def anomalib(cls, **overrides: Any) -> WinCLIPConfig:
        """anomalib's ``WinClipModel`` computation (the defaults)."""
        return cls(**overrides)

    @classmethod
    def paper(cls, **overrides: Any) -> WinCLIPConfig:
        """The paper's reading: as :meth:`anomalib` with the repeated template made a pair.

        The other settings are anomalib's, which implements the paper's Eq. 1 (zero-shot
        score), the harmonic window aggregation and Eq. 4 (visual association score) as
        its docstrings cite them; docs/winclip.md lists what was and was not checked.
        """
        return cls(**{"prompts": "paper", **overrides})

    @staticmethod
    def backbone_config() -> BackboneConfig:
        """The backbone setting: 240 px, open_clip's ``encode_image`` (``LN_post`` on CLS),
        no V-V attention, one tap at the last block.

        ``ClipBackbone.from_pretrained("ViT-B-16-plus-240", "laion400m_e31",
        WinCLIPConfig.backbone_config())``; wrap it in
        :class:`~resad_kit.clip.windows.WindowBackbone` for the engine's feature cache.
        """
        return BackboneConfig(image_size=240, layers=(12,), vv_blocks=0, global_ln_post=True)

    def prompt_ensemble(self) -> PromptEnsemble:
        """The :class:`~resad_kit.clip.prompts.PromptEnsemble` of :attr:`prompts`."""
        ensemble = PromptEnsemble.winclip()
        if self.prompts == "anomalib":
            return ensemble
        templates = list(WINCLIP_TEMPLATES)
        templates[7] = "a jpeg corrupted photo of a {}."
        return dataclasses.replace(ensemble, templates=tuple(templates))

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-serialisable values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WinCLIPConfig:
        """Rebuild a config from :meth:`to_dict`'s output; unknown keys are an error."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"WinCLIPConfig.from_dict: unknown fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
