"""Compositional prompt ensembles, text anchors and the text residual.

One mechanism, parameterised by word lists (:class:`PromptEnsemble`): every prompt is
``template.format(state.format(noun))`` for a template and a *state pattern* (a phrase
with one ``{}`` for the noun), state-major; the normal and the anomalous sets are averaged
into one text anchor each (:func:`encode_prompt_ensemble`).

- Res²CLIP (App. B, eqs. 30–32; :meth:`PromptEnsemble.res2clip`): 15 templates (App.
  B.4), the normal states ``"" (noun only), perfect, flawless, clean, undamaged`` and the
  anomalous state ``damaged`` (App. B.2), one generic noun ``object`` for every class
  (App. B.3). Normal set 5 × 15 = 75 prompts (eq. 30); anomalous set 15 prompts (eq. 31),
  or 30 with the official code's extra phrase ``"object with damaged"``.
- WinCLIP's compositional prompt ensemble (Jeong et al., CVPR 2023, Sec. 3.2;
  :meth:`PromptEnsemble.winclip`): the word lists of anomalib's
  ``anomalib.models.image.winclip.prompting`` — 7 normal and 4 anomalous state patterns
  × 21 templates (147 + 84 prompts), the class name as the noun.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from resad_kit.ops import prompt_ensemble_mean, text_residual

if TYPE_CHECKING:
    from resad_kit.clip.backbone import ClipBackbone

__all__ = [
    "ANOMALOUS_STATES",
    "NORMAL_STATES",
    "NOUN",
    "TEMPLATES",
    "WINCLIP_ANOMALOUS_STATES",
    "WINCLIP_NORMAL_STATES",
    "WINCLIP_TEMPLATES",
    "PromptEnsemble",
    "PromptSets",
    "TextAnchors",
    "build_prompts",
    "encode_prompt_ensemble",
]

#: The 15 templates of App. B.4 (identical in the official code); ``{}`` takes the phrase.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "the {} in the image.",
    "the {} in the scene.",
    "an image of a {}.",
    "an image of the {}.",
    "a rendering of a {}.",
    "a photo of one {}.",
    "showing the {}.",
    "showing a {}.",
    "itap of a {}.",
)
#: Normal state words (App. B.2); the empty state gives the noun-only phrase.
NORMAL_STATES: tuple[str, ...] = ("", "perfect", "flawless", "clean", "undamaged")
#: Anomalous state words (App. B.2).
ANOMALOUS_STATES: tuple[str, ...] = ("damaged",)
#: The generic noun used for every class (App. B.3).
NOUN = "object"

#: WinCLIP's normal state patterns (anomalib ``prompting.NORMAL_STATES``; WinCLIP Sec. 3.2).
WINCLIP_NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
#: WinCLIP's anomalous state patterns (anomalib ``prompting.ANOMALOUS_STATES``).
WINCLIP_ANOMALOUS_STATES: tuple[str, ...] = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
#: WinCLIP's 21 templates as anomalib lists them (``prompting.TEMPLATES``), including its
#: repeated ``"a jpeg corrupted photo of the {}."`` (entries 8 and 9; the other templates
#: come in "a"/"the" pairs, so entry 8 is presumably meant to read "of a").
WINCLIP_TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


def _pattern(state: str) -> str:
    """A Res²CLIP state word as a state pattern: ``""`` → ``"{}"``, ``"w"`` → ``"w {}"``."""
    return f"{state} {{}}" if state else "{}"


class PromptSets(NamedTuple):
    """The normal and anomalous prompt sets of eqs. (30)–(31), state-major order.

    Example:
        >>> from resad_kit.clip import build_prompts
        >>> sets = build_prompts()
        >>> len(sets.normal), len(sets.anomalous)
        (75, 15)
    """

    normal: tuple[str, ...]
    anomalous: tuple[str, ...]


class TextAnchors(NamedTuple):
    """Text anchors and text residual of one prompt ensemble (float32, ``(D,)`` each).

    Attributes:
        normal: ``F̂_t^n``, the ℓ2-normalised normal anchor.
        anomalous: ``F̂_t^a``, the ℓ2-normalised anomalous anchor.
        residual: ``R_t = F̂_t^a − F̂_t^n`` (eq. 3), or ``R̂_t`` with ``unit_residual=True``.

    Example:
        >>> from resad_kit.clip import ClipBackbone, encode_prompt_ensemble
        >>> anchors = encode_prompt_ensemble(ClipBackbone.tiny())
        >>> anchors.normal.shape, float(anchors.normal.norm())
        (torch.Size([32]), 1.0)
    """

    normal: Tensor
    anomalous: Tensor
    residual: Tensor


@dataclass(frozen=True)
class PromptEnsemble:
    """Word lists of a compositional prompt ensemble (state patterns × templates).

    A prompt is ``template.format(state.format(noun))``; the sets are state-major (all
    templates of the first state, then the second, …). Duplicates are kept: each prompt
    counts once in the mean (anomalib's WinCLIP list repeats one template).

    Attributes:
        templates: phrases with one ``{}`` for the state phrase.
        normal_states: normal state patterns, each with one ``{}`` for the noun.
        anomalous_states: anomalous state patterns, each with one ``{}`` for the noun.

    Raises:
        ValueError: an empty list, or an entry that is not a str with exactly one ``{}``.

    Example:
        >>> from resad_kit.clip.prompts import PromptEnsemble
        >>> winclip = PromptEnsemble.winclip().build("bottle")
        >>> len(winclip.normal), len(winclip.anomalous)
        (147, 84)
        >>> winclip.normal[0], winclip.anomalous[-1]
        ('a cropped photo of the bottle.', 'a photo of a bottle with damage for anomaly detection.')
        >>> PromptEnsemble.res2clip().build() == build_prompts()
        True
    """

    templates: tuple[str, ...]
    normal_states: tuple[str, ...]
    anomalous_states: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("templates", "normal_states", "anomalous_states"):
            value = getattr(self, name)
            items = tuple(value) if isinstance(value, (tuple, list)) else None
            if not items or not all(isinstance(t, str) and t.count("{}") == 1 for t in items):
                raise ValueError(
                    f"PromptEnsemble: `{name}` must be a non-empty sequence of str with "
                    f"exactly one '{{}}' each; got {value!r}"
                )
            object.__setattr__(self, name, items)

    @classmethod
    def res2clip(cls, *, extra_anomaly_phrase: bool = False) -> PromptEnsemble:
        """Res²CLIP's ensemble (App. B, eqs. 30–31), optionally with the official code's
        second anomalous phrase ``"<noun> with damaged"``."""
        anomalous = tuple(_pattern(s) for s in ANOMALOUS_STATES)
        if extra_anomaly_phrase:
            anomalous += tuple(f"{{}} with {s}" for s in ANOMALOUS_STATES)
        return cls(TEMPLATES, tuple(_pattern(s) for s in NORMAL_STATES), anomalous)

    @classmethod
    def winclip(cls) -> PromptEnsemble:
        """WinCLIP's compositional prompt ensemble with anomalib's word lists (as is)."""
        return cls(WINCLIP_TEMPLATES, WINCLIP_NORMAL_STATES, WINCLIP_ANOMALOUS_STATES)

    def build(self, class_name: str = NOUN) -> PromptSets:
        """The normal and anomalous prompts for one noun (stripped of outer spaces).

        Raises:
            ValueError: ``class_name`` is not a non-empty str.
        """
        if not isinstance(class_name, str) or not class_name.strip():
            raise ValueError(
                f"build_prompts: `class_name` must be a non-empty str; got {class_name!r}"
            )
        noun = class_name.strip()
        normal = [s.format(noun) for s in self.normal_states]
        anomalous = [s.format(noun) for s in self.anomalous_states]
        return PromptSets(
            tuple(t.format(p) for p in normal for t in self.templates),
            tuple(t.format(p) for p in anomalous for t in self.templates),
        )


def build_prompts(
    class_name: str = NOUN,
    *,
    extra_anomaly_phrase: bool = False,
    ensemble: PromptEnsemble | None = None,
) -> PromptSets:
    """The prompt sets of a compositional ensemble for one noun (Res²CLIP's by default).

    Res²CLIP's sets are ``P_t^n`` and ``P_t^a`` of eqs. (30)–(31). The noun-only phrase is
    written without a leading space (the official code's ``" object"`` tokenises
    identically: CLIP's tokenizer strips whitespace).

    Args:
        class_name: the noun (Res²CLIP uses ``"object"`` for every class, App. B.3).
        extra_anomaly_phrase: add the official Res²CLIP code's second anomalous phrase
            ``"<noun> with damaged"`` (paper: no). Only without ``ensemble``.
        ensemble: the word lists; ``None`` is :meth:`PromptEnsemble.res2clip`.

    Returns:
        :class:`PromptSets`; Res²CLIP's has 75 normal and 15 (or 30) anomalous prompts.

    Raises:
        ValueError: an empty ``class_name``, or ``extra_anomaly_phrase`` with ``ensemble``.

    Paper: Res²CLIP App. B, eqs. (30)–(31); WinCLIP Sec. 3.2.

    Example:
        >>> from resad_kit.clip import build_prompts
        >>> sets = build_prompts()
        >>> sets.normal[:2]  # the empty state: noun only
        ('a photo of a object.', 'a photo of the object.')
        >>> sets.normal[15], sets.anomalous[0]
        ('a photo of a perfect object.', 'a photo of a damaged object.')
        >>> len(build_prompts(extra_anomaly_phrase=True).anomalous)
        30
    """
    if ensemble is None:
        ensemble = PromptEnsemble.res2clip(extra_anomaly_phrase=extra_anomaly_phrase)
    elif extra_anomaly_phrase:
        raise ValueError(
            "build_prompts: `extra_anomaly_phrase` is Res²CLIP's option; with `ensemble` "
            "put the phrase in its anomalous_states"
        )
    return ensemble.build(class_name)


# Per backbone (dropped with it): (class_name, ensemble, flags, device) → anchors.
_CACHE: weakref.WeakKeyDictionary[ClipBackbone, dict[tuple[object, ...], TextAnchors]] = (
    weakref.WeakKeyDictionary()
)


def encode_prompt_ensemble(
    backbone: ClipBackbone,
    class_name: str = NOUN,
    *,
    extra_anomaly_phrase: bool = False,
    normalize_before_mean: bool = False,
    unit_residual: bool = False,
    batch_size: int | None = None,
    ensemble: PromptEnsemble | None = None,
) -> TextAnchors:
    """Normal and anomalous text anchors of a prompt ensemble, and the text residual.

    ``F_t = mean_T E_t(T)`` over each prompt set (Res²CLIP eq. 32; WinCLIP averages its
    compositional ensemble the same way), then ℓ2-normalised;
    ``R_t = F̂_t^a − F̂_t^n`` via :func:`resad_kit.ops.text_residual` (eq. 3).
    The text encoder runs in float32 (autocast off). Results are cached per
    backbone, class name, ensemble, flags and device: the text side is computed once
    and a repeated call returns copies of the cached tensors.

    Args:
        backbone: a :class:`ClipBackbone` (anything with ``encode_text`` and ``device``).
        class_name: the noun (Res²CLIP: ``"object"`` for every class).
        extra_anomaly_phrase: the official Res²CLIP code's second anomalous phrase (only
            without ``ensemble``).
        normalize_before_mean: ℓ2-normalise each prompt embedding before averaging
            (official Res²CLIP code; Res²CLIP paper and anomalib's WinCLIP: raw mean).
        unit_residual: return the unit residual ``R̂_t`` (official Res²CLIP code).
        batch_size: prompts per text-encoder call (bounds memory; the first call's
            result is what gets cached).
        ensemble: the word lists (:class:`PromptEnsemble`); ``None``: Res²CLIP's.

    Returns:
        :class:`TextAnchors` ``(normal, anomalous, residual)``, float32, each ``(D,)``.

    Paper: Res²CLIP eqs. (30)–(32), (3), App. B; WinCLIP Sec. 3.2.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone, encode_prompt_ensemble
        >>> from resad_kit.ops import text_residual
        >>> backbone = ClipBackbone.tiny()
        >>> anchors = encode_prompt_ensemble(backbone)
        >>> torch.equal(anchors.residual, text_residual(anchors.anomalous, anchors.normal))
        True
        >>> torch.equal(encode_prompt_ensemble(backbone).residual, anchors.residual)  # cached
        True
    """
    prompts = build_prompts(
        class_name, extra_anomaly_phrase=extra_anomaly_phrase, ensemble=ensemble
    )
    device = backbone.device
    key = (
        class_name.strip(),
        ensemble,
        bool(extra_anomaly_phrase),
        bool(normalize_before_mean),
        bool(unit_residual),
        device,
    )
    per_backbone = _CACHE.setdefault(backbone, {})
    anchors = per_backbone.get(key)
    if anchors is None:
        with torch.autocast(device.type, enabled=False):
            embeddings = backbone.encode_text(
                prompts.normal + prompts.anomalous, batch_size=batch_size
            )
        n = len(prompts.normal)
        normal, anomalous = (
            F.normalize(prompt_ensemble_mean(e, normalize_each=normalize_before_mean), dim=-1)
            for e in (embeddings[:n], embeddings[n:])
        )
        residual = text_residual(anomalous, normal, unit=unit_residual)
        anchors = TextAnchors(normal, anomalous, residual)
        per_backbone[key] = anchors
    return TextAnchors(*(t.clone() for t in anchors))
