"""Configuration of :class:`~resad_kit.methods.Res2CLIP` (paper sec. 3–4, official code)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

from resad_kit.ops._validation import check_positive_int, is_real

__all__ = ["Mode", "Res2CLIPConfig"]

Mode = Literal["training_free", "fine_tuned"]
MODES = ("training_free", "fine_tuned")
BRANCHES = ("text", "visual", "residual")

# Fusion weights (text, visual, residual) per mode: eq. 5, App. F.2.
_PIXEL_WEIGHTS = {"training_free": (0.1, 1.0, 1.0), "fine_tuned": (0.1, 1.0, 0.1)}
_IMAGE_WEIGHTS = {"training_free": (1.0, 1.0, 1.0), "fine_tuned": (1.0, 1.0, 0.1)}
# Residual-branch layers per mode (App. F.2 and the official code): the last tap, or every tap.
_RESIDUAL_TAPS: dict[str, tuple[int, ...] | str] = {"training_free": (-1,), "fine_tuned": "all"}
# The fields whose default depends on the mode (``None``: the mode's value).
_MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "residual_taps": _RESIDUAL_TAPS,
    "pixel_weights": _PIXEL_WEIGHTS,
    "image_weights": _IMAGE_WEIGHTS,
}


def _check_taps(name: str, value: object) -> tuple[int, ...] | str:
    if value == "all":
        return "all"
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if (
        not isinstance(value, (tuple, list))
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(
            f"Res2CLIPConfig: `{name}` must be 'all' or a non-empty tuple of tap positions "
            f"(indices into backbone.layers, negative from the end); got {value!r}"
        )
    if len(set(value)) != len(value):
        raise ValueError(f"Res2CLIPConfig: `{name}` must not repeat a tap; got {value!r}")
    return tuple(value)


def _check_weights(name: str, value: object) -> tuple[float, float, float]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 3
        or not all(is_real(v) and math.isfinite(v) for v in value)  # type: ignore[arg-type]
    ):
        raise ValueError(
            f"Res2CLIPConfig: `{name}` must be three finite weights (text, visual, residual); "
            f"got {value!r}"
        )
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _check_number(name: str, value: object, *, low: float, closed: bool = True) -> float:
    ok = is_real(value) and math.isfinite(value)  # type: ignore[arg-type]
    if not ok or (value < low if closed else value <= low):  # type: ignore[operator]
        bound = f">= {low}" if closed else f"> {low}"
        raise ValueError(f"Res2CLIPConfig: `{name}` must be a finite number {bound}; got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_retrieval_k(value: object) -> int | str | None:
    """``None``, ``"auto"``, ``"dense"`` or a positive int (numpy integers stored as int)."""
    if value is None or value in ("auto", "dense"):
        return value  # type: ignore[return-value]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise ValueError(
        "Res2CLIPConfig: `retrieval_k` must be None, 'auto', 'dense' or a positive int; "
        f"got {value!r}"
    )


@dataclass(frozen=True)
class Res2CLIPConfig:
    """Every setting of the Res²CLIP composer, with its source (paper, official code).

    Presets: :meth:`paper` (the paper's stated settings; the library default) and
    :meth:`official_code` (the official code's behaviour where it differs from
    the paper), each in ``"training_free"`` (Res²CLIP*) or ``"fine_tuned"`` (Res²CLIP†)
    mode. Fields left ``None`` take the mode's value when the config is built, so a
    config always holds resolved values (:meth:`to_dict` / :meth:`from_dict` round trip);
    :meth:`replace` with another ``mode`` resolves them again for that mode (values given
    explicitly are kept).
    The backbone's own flags (V-V block count 20 vs 19, ``global_ln_post``) live in
    :class:`~resad_kit.clip.BackboneConfig`; the metric binning in
    :class:`~resad_kit.metrics.MetricConfig`.

    Numeric fields take Python numbers or numpy scalars (``np.float32``, ``np.int64``) and
    are stored as Python floats, so :meth:`to_dict` stays JSON-serialisable.

    Layers are given as **tap positions**, indices into ``backbone.layers`` (negative
    counts from the end), so one config fits ViT-L (taps 6, 12, 18, 24: ``-1`` is layer
    24) and the tiny test backbone alike; ``"all"`` means every tap.

    Attributes:
        mode: ``"training_free"`` (all adapters the identity, none built) or
            ``"fine_tuned"`` (the paper's adapters, App. E).
        text_taps: text-branch layers (App. F.2 + code: layer 24 only; eq. 6 writes L).
        visual_taps: visual-branch layers (paper + code: all four taps).
        residual_taps: residual-branch layers; ``None``: the mode's (App. F.2 + code:
            training-free {24}, fine-tuned {6, 12, 18, 24}).
        gamma: radial penalty γ of eq. 8 (paper + code: 0.01, per patch unit).
        retrieval_k: sparsemax support search of :func:`~resad_kit.ops.retrieve`
            (``"auto"``, an int, or ``None`` for the full sort; all exact and identical), or
            ``"dense"``: the full stable sort and a dense ``W·B̂`` product, with no
            device-to-host sync (with ``resad_kit.checks(False)`` the whole forward and the
            losses then run sync-free on a GPU; same weights, references equal to float
            rounding; the weights are stored ``M`` wide).
        chunk_size: query rows per similarity block of :func:`~resad_kit.ops.retrieve`
            (rounded up to a multiple of 64; bounds its memory to O(chunk_size·M));
            ``None``: ``retrieve``'s default, blocks of about 2²³ similarities (32 MiB in
            float32) or 1,024 rows for larger banks, whole images and layers where they fit.
            The chunking changes results at most by float rounding (a BLAS may round a
            similarity row 1 ulp differently at another position of a block).
        top_fraction: share of pixels averaged for image scores (eqs. 7, 9, 12: 1 %).
        blur_sigma, blur_kernel: Gaussian smoothing (App. F.2: σ = 4, 5×5, zero padding).
        smooth_branch_maps: smooth each upsampled branch map (code).
        smooth_fused_map: smooth the fused map again (code).
        pixel_weights: ``(λ_text, λ_vis, λ_res)`` of the pixel fusion (eq. 5); ``None``:
            the mode's (App. F.2: training-free 0.1 : 1 : 1, fine-tuned 0.1 : 1 : 0.1).
        image_weights: image-score fusion weights; ``None``: the mode's (App. F.2:
            training-free 1 : 1 : 1, fine-tuned 1 : 1 : 0.1).
        clamp_residual_projection: ``max(0, ·)`` on every residual projection at
            inference (code; paper: no clamp).
        raw_global_residual: the main text's raw ``f_q − mean f_ref`` instead of the
            normalised form of App. A eq. 17.
        class_name: prompt noun (App. B.3 + code: ``"object"`` for every class).
        extra_anomaly_phrase: the code's second anomalous phrase.
        normalize_before_mean: normalise each prompt embedding before averaging (code;
            paper eq. 32 averages raw encodings).
        unit_text_residual: feed the unit ``R̂_t`` to the adapters (code; needed to load
            official checkpoints).
        margin: hinge target τ of eqs. 35–38 (code ``tau = 1.0``; paper: 1).
        loss_reduction: ``"batch"`` (code: batch-pooled pixel counts, class-balanced
            image terms) or ``"per_sample"`` (the paper's per-image form).
        lr_local: learning rate of the local adapters ``A_{v,l}``, ``A^res_{v,l}`` (5e-4).
        lr_text: learning rate of ``A_t`` and ``A_t^res`` (1e-4).
        lr_global_visual: learning rate of ``A^res_{v,cls}`` (paper 1e-4, code 5e-4).

    The learning rates are used through :meth:`Res2CLIP.optimizer_groups
    <resad_kit.methods.Res2CLIP.optimizer_groups>`, which declares the official code's four
    Adam optimisers with them; the engine (``resad_kit.engine.train``) builds its optimisers
    from those groups, so a rate changed here is the rate trained with.

    Example:
        >>> from resad_kit.methods import Res2CLIPConfig
        >>> tf = Res2CLIPConfig.paper()
        >>> tf.mode, tf.pixel_weights, tf.image_weights, tf.residual_taps
        ('training_free', (0.1, 1.0, 1.0), (1.0, 1.0, 1.0), (-1,))
        >>> ft = Res2CLIPConfig.paper("fine_tuned")
        >>> ft.pixel_weights, ft.image_weights, ft.residual_taps
        ((0.1, 1.0, 0.1), (1.0, 1.0, 0.1), 'all')
        >>> code = Res2CLIPConfig.official_code("fine_tuned")
        >>> code.clamp_residual_projection, code.lr_global_visual
        (True, 0.0005)
        >>> Res2CLIPConfig.from_dict(code.to_dict()) == code
        True
    """

    mode: Mode = "training_free"
    text_taps: tuple[int, ...] | str = (-1,)
    visual_taps: tuple[int, ...] | str = "all"
    residual_taps: tuple[int, ...] | str | None = None
    gamma: float = 0.01
    retrieval_k: int | str | None = "auto"
    chunk_size: int | None = None
    top_fraction: float = 0.01
    blur_sigma: float = 4.0
    blur_kernel: int = 5
    smooth_branch_maps: bool = True
    smooth_fused_map: bool = True
    pixel_weights: tuple[float, float, float] | None = None
    image_weights: tuple[float, float, float] | None = None
    clamp_residual_projection: bool = False
    raw_global_residual: bool = False
    class_name: str = "object"
    extra_anomaly_phrase: bool = False
    normalize_before_mean: bool = False
    unit_text_residual: bool = False
    margin: float = 1.0
    loss_reduction: Literal["batch", "per_sample"] = "batch"
    lr_local: float = 5e-4
    lr_text: float = 1e-4
    lr_global_visual: float = 1e-4

    def __post_init__(self) -> None:
        fn = "Res2CLIPConfig"
        if self.mode not in MODES:
            raise ValueError(f"{fn}: `mode` must be one of {MODES}; got {self.mode!r}")
        given = frozenset(n for n in _MODE_DEFAULTS if getattr(self, n) is not None)
        resolved: dict[str, Any] = {
            "text_taps": _check_taps("text_taps", self.text_taps),
            "visual_taps": _check_taps("visual_taps", self.visual_taps),
            "residual_taps": _check_taps(
                "residual_taps",
                _RESIDUAL_TAPS[self.mode] if self.residual_taps is None else self.residual_taps,
            ),
            "pixel_weights": _check_weights(
                "pixel_weights", self.pixel_weights or _PIXEL_WEIGHTS[self.mode]
            ),
            "image_weights": _check_weights(
                "image_weights", self.image_weights or _IMAGE_WEIGHTS[self.mode]
            ),
            "gamma": _check_number("gamma", self.gamma, low=0.0),
            "top_fraction": _check_number("top_fraction", self.top_fraction, low=0.0, closed=False),
            "blur_sigma": _check_number("blur_sigma", self.blur_sigma, low=0.0, closed=False),
            "margin": _check_number("margin", self.margin, low=0.0, closed=False),
        }
        for name in ("lr_local", "lr_text", "lr_global_visual"):
            resolved[name] = _check_number(name, getattr(self, name), low=0.0)
        if resolved["top_fraction"] > 1:
            raise ValueError(f"{fn}: `top_fraction` must be in (0, 1]; got {self.top_fraction}")
        check_positive_int(fn, "blur_kernel", self.blur_kernel)
        if self.blur_kernel % 2 == 0:
            raise ValueError(f"{fn}: `blur_kernel` must be odd; got {self.blur_kernel}")
        check_positive_int(fn, "chunk_size", self.chunk_size, optional=True)
        resolved["retrieval_k"] = _check_retrieval_k(self.retrieval_k)
        if self.loss_reduction not in ("batch", "per_sample"):
            raise ValueError(
                f"{fn}: `loss_reduction` must be 'batch' or 'per_sample'; "
                f"got {self.loss_reduction!r}"
            )
        if not isinstance(self.class_name, str) or not self.class_name.strip():
            raise ValueError(f"{fn}: `class_name` must be a non-empty str; got {self.class_name!r}")
        for name, value in resolved.items():
            object.__setattr__(self, name, value)
        # Not a field: the mode-dependent fields given explicitly (``replace`` re-resolves the
        # others for a new mode); equality, hashing and ``to_dict`` ignore it.
        object.__setattr__(self, "_given", given)

    @classmethod
    def paper(cls, mode: Mode = "training_free", **overrides: Any) -> Res2CLIPConfig:
        """The paper's settings (the defaults) in ``mode``; ``overrides`` replace fields."""
        return cls(mode=mode, **overrides)

    @classmethod
    def official_code(cls, mode: Mode = "training_free", **overrides: Any) -> Res2CLIPConfig:
        """The official code's behaviour where it differs from the paper.

        Clamped residual projections, the extra anomalous phrase, per-prompt
        normalisation before the ensemble mean, the unit text residual as adapter input,
        and lr 5e-4 for ``A^res_{v,cls}``. Pair it with
        ``BackboneConfig.official_code()`` (19 V-V blocks) and
        ``MetricConfig.official_code()`` (adeval's 200 bins) to compare with the
        published numbers.
        """
        code = {
            "clamp_residual_projection": True,
            "extra_anomaly_phrase": True,
            "normalize_before_mean": True,
            "unit_text_residual": True,
            "lr_global_visual": 5e-4,
        }
        return cls(mode=mode, **{**code, **overrides})

    def replace(self, **changes: Any) -> Res2CLIPConfig:
        """A copy with ``changes``; mode-dependent fields follow a new ``mode``.

        ``residual_taps``, ``pixel_weights`` and ``image_weights`` that were not given
        explicitly (left ``None`` when this config was built) are resolved again for the
        copy's mode; explicit values, and values in ``changes``, are kept. Pass
        ``field=None`` to return one of them to the mode's value.

        Example:
            >>> from resad_kit.methods import Res2CLIPConfig
            >>> ft = Res2CLIPConfig.paper().replace(mode="fine_tuned")
            >>> ft.pixel_weights, ft.residual_taps
            ((0.1, 1.0, 0.1), 'all')
            >>> own = Res2CLIPConfig.paper(pixel_weights=(1.0, 1.0, 1.0))
            >>> own.replace(mode="fine_tuned").pixel_weights  # explicit: kept
            (1.0, 1.0, 1.0)
        """
        for name in _MODE_DEFAULTS:
            if name not in changes and name not in getattr(self, "_given", _MODE_DEFAULTS):
                changes[name] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The resolved fields as JSON-serialisable values (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v, tuple) else v
            for f in dataclasses.fields(self)
            for v in (getattr(self, f.name),)
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Res2CLIPConfig:
        """Rebuild a config from :meth:`to_dict`'s output; unknown keys are an error.

        :meth:`to_dict` stores resolved values, so a mode-dependent field equal to its
        mode's value is taken as not given (:meth:`replace` then re-resolves it for
        another mode); ``from_dict(c.to_dict()) == c`` always holds.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Res2CLIPConfig.from_dict: unknown fields {unknown}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        mode = kwargs.get("mode", "training_free")
        for name, defaults in _MODE_DEFAULTS.items():
            if mode in defaults and kwargs.get(name) == defaults[mode]:
                kwargs[name] = None
        return cls(**kwargs)
