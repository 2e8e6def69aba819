"""The paper's prompt ensemble, text anchors and text residual (App. B, eqs. 30–32, 3; spec 2).

A prompt is ``template(state + " " + noun)``: 15 templates (App. B.4), the normal
states ``"" (noun only), perfect, flawless, clean, undamaged`` and the anomalous
state ``damaged`` (App. B.2), and one generic noun ``object`` for every class
(App. B.3). Normal set: 5 × 15 = 75 prompts (eq. 30); anomalous set: 15 prompts
(eq. 31), or 30 with the official code's extra phrase ``"object with damaged"``.
"""

from __future__ import annotations

import weakref
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


def _phrase(state: str, noun: str) -> str:
    return f"{state} {noun}" if state else noun


def build_prompts(class_name: str = NOUN, *, extra_anomaly_phrase: bool = False) -> PromptSets:
    """The prompt sets ``P_t^n`` and ``P_t^a`` of eqs. (30)–(31) for one noun.

    The noun-only phrase is written without a leading space (the official code's
    ``" object"`` tokenises identically: CLIP's tokenizer strips whitespace).

    Args:
        class_name: the noun (the paper uses ``"object"`` for every class, App. B.3).
        extra_anomaly_phrase: add the official code's second anomalous phrase
            ``"<noun> with damaged"`` (spec flag ``extra_anomaly_phrase``; paper: no).

    Returns:
        :class:`PromptSets` with 75 normal and 15 (or 30) anomalous prompts.

    Paper: App. B, eqs. (30)–(31); spec 2.1.

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
    if not isinstance(class_name, str) or not class_name.strip():
        raise ValueError(f"build_prompts: `class_name` must be a non-empty str; got {class_name!r}")
    noun = class_name.strip()
    normal = [_phrase(s, noun) for s in NORMAL_STATES]
    anomalous = [_phrase(s, noun) for s in ANOMALOUS_STATES]
    if extra_anomaly_phrase:
        anomalous += [f"{noun} with {s}" for s in ANOMALOUS_STATES]
    return PromptSets(
        tuple(t.format(p) for p in normal for t in TEMPLATES),
        tuple(t.format(p) for p in anomalous for t in TEMPLATES),
    )


# Per backbone (dropped with it): (class_name, flags, device) → anchors.
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
) -> TextAnchors:
    """Normal and anomalous text anchors of the prompt ensemble, and the text residual.

    ``F_t = mean_T E_t(T)`` over each prompt set (eq. 32), then ℓ2-normalised;
    ``R_t = F̂_t^a − F̂_t^n`` via :func:`resad_kit.ops.text_residual` (eq. 3).
    The text encoder runs in float32 (autocast off). Results are cached per
    backbone, class name, flags and device: the text side is computed once
    (spec 2.3) and a repeated call returns copies of the cached tensors.

    Args:
        backbone: a :class:`ClipBackbone` (anything with ``encode_text`` and ``device``).
        class_name: the noun (paper: ``"object"`` for every class).
        extra_anomaly_phrase: the official code's second anomalous phrase (spec flag).
        normalize_before_mean: ℓ2-normalise each prompt embedding before averaging
            (official code; spec flag ``normalize_before_mean``; paper: raw mean).
        unit_residual: return the unit residual ``R̂_t`` (official code; spec flag
            ``unit_text_residual``).
        batch_size: prompts per text-encoder call (bounds memory; the first call's
            result is what gets cached).

    Returns:
        :class:`TextAnchors` ``(normal, anomalous, residual)``, float32, each ``(D,)``.

    Paper: eqs. (30)–(32), (3), App. B; spec 2.

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
    prompts = build_prompts(class_name, extra_anomaly_phrase=extra_anomaly_phrase)
    device = backbone.device
    key = (
        class_name.strip(),
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
