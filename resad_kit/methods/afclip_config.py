"""Configuration of :class:`~resad_kit.methods.AFCLIP` (AF-CLIP paper and official code).

Sources: Fang, Lv, Su, "AF-CLIP: Zero-Shot Anomaly Detection via Anomaly-Focused CLIP
Adaptation" (ACM MM 2025; "the paper", its sections and equations) and the official code,
GitHub Faustinaqq/AF-CLIP (``main.py``, ``clip/model.py``, ``util/utils.py``; "the code").
Where they differ, :meth:`AFCLIPConfig.official_code` follows the code and
:meth:`AFCLIPConfig.paper` the paper's text; docs/afclip.md lists every difference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from resad_kit.ops._validation import is_real

__all__ = ["AFCLIPConfig"]

_BORDERS = ("zero", "renormalize")
_POSITIONS = ("before_sot", "after_sot")
_PADDINGS = ("zeros", "reflect", "replicate", "symmetric")


def _taps(name: str, value: object) -> tuple[int, ...] | str:
    if value == "all":
        return "all"
    if (
        not isinstance(value, (tuple, list))
        or not value
        or not all(type(v) is int for v in value)
        or len(set(value)) != len(value)
    ):
        raise ValueError(
            f"AFCLIPConfig: `{name}` must be 'all' or a non-empty tuple of distinct tap "
            f"positions (indices into backbone.layers); got {value!r}"
        )
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class AFCLIPConfig:
    """Every setting of the AF-CLIP composer, with its source.

    Presets: :meth:`official_code` (the default of :class:`~resad_kit.methods.AFCLIP`:
    the released weights and the reported numbers come from the code) and :meth:`paper`
    (the paper's text where it differs: renormalised aggregation border, learnable
    context after ``<SOT>``). Layers are **tap positions**, indices into
    ``backbone.layers`` (``BackboneConfig.afclip()`` taps blocks 6, 12, 18, 24).

    Attributes:
        taps: tapped layers of the 12 views, or ``"all"`` (paper Sec. 3.2 + code
            ``feature_layers``: 6, 12, 18, 24).
        memory_taps: layers of the AF-CLIP+ memory banks (Eq. 16; code
            ``memory_layers``, same default).
        windows: spatial window sides r (Eqs. 5–6; paper + code: 1, 3, 5).
        aggregation_sigma: σ of the window's Gaussian weights (code: 4; the paper leaves
            σ unspecified).
        aggregation_border: ``"zero"`` (code: zero padding, kernel normalised over the
            full window) or ``"renormalize"`` (Eq. 5 read literally: weights renormalised
            over the valid neighbours).
        temperature: τ of Eq. 9 (paper + code: 0.07, not CLIP's learnt scale); the
            logits are summed over the views before the softmax (Eq. 10).
        alpha: weight of ``p_CLS`` in the AF-CLIP+ image score (Eq. 18; 0.1).
        beta: weight of the zero-shot map in the AF-CLIP+ map (Eq. 18; 0.1; the code uses
            its single ``--alpha`` for both).
        blur_sigma: σ of the Gaussian smoothing of the upsampled map (code:
            ``scipy.ndimage.gaussian_filter(σ=4)``).
        blur_kernel: its odd side (scipy's default truncation 4σ: 33 taps).
        blur_padding: its border: ``"symmetric"`` is scipy's ``mode="reflect"`` (the
            code's); ``"zeros"``, ``"reflect"`` (mirror without the edge), ``"replicate"``.
        n_ctx: learnable context vectors M (paper + code: 12).
        prompt_position: ``"before_sot"`` (code: context placed before ``<SOT>``, EOT
            index shifted by M) or ``"after_sot"`` (Eq. 8 read as
            ``[W_1 … W_M][without defect.]`` after ``<SOT>``).
        prompt_init_std: σ of the context's normal initialisation (code: 0.01).
        suffixes: the normal and anomalous state texts (code: ``"without defect."``,
            ``"with defect."``; object-agnostic, no class name).
        adapter_inner_dim: attention width d̃ of the adapter (code: 512 = 8 × 64).
        adapter_heads: its heads (code: 8).
        focal_gamma: γ of the focal losses of Eqs. 11 and 13 (code: 4, no α).
        lambda_seg: λ₁ of Eq. 15 (paper + code: 1).
        lambda_pal: λ₂ of Eq. 15 (paper + code: 1).
        lr: Adam learning rate of the adapter and the context (paper + code: 1e-4; Adam's
            β and the rest of the recipe are ``TrainConfig.afclip()``).
        chunk_size: query rows per similarity block of the memory search (``None``:
            automatic, see :func:`~resad_kit.ops.knn_distance`).

    Example:
        >>> from resad_kit.methods import AFCLIPConfig
        >>> code, paper = AFCLIPConfig.official_code(), AFCLIPConfig.paper()
        >>> code.aggregation_border, paper.aggregation_border
        ('zero', 'renormalize')
        >>> code.prompt_position, paper.prompt_position, code.windows, code.alpha
        ('before_sot', 'after_sot', (1, 3, 5), 0.1)
        >>> AFCLIPConfig.from_dict(paper.to_dict()) == paper
        True
    """

    taps: tuple[int, ...] | Literal["all"] = "all"
    memory_taps: tuple[int, ...] | Literal["all"] = "all"
    windows: tuple[int, ...] = (1, 3, 5)
    aggregation_sigma: float = 4.0
    aggregation_border: Literal["zero", "renormalize"] = "zero"
    temperature: float = 0.07
    alpha: float = 0.1
    beta: float = 0.1
    blur_sigma: float = 4.0
    blur_kernel: int = 33
    blur_padding: Literal["zeros", "reflect", "replicate", "symmetric"] = "symmetric"
    n_ctx: int = 12
    prompt_position: Literal["before_sot", "after_sot"] = "before_sot"
    prompt_init_std: float = 0.01
    suffixes: tuple[str, str] = ("without defect.", "with defect.")
    adapter_inner_dim: int = 512
    adapter_heads: int = 8
    focal_gamma: float = 4.0
    lambda_seg: float = 1.0
    lambda_pal: float = 1.0
    lr: float = 1e-4
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        fn = "AFCLIPConfig"
        set_ = object.__setattr__
        set_(self, "taps", _taps("taps", self.taps))
        set_(self, "memory_taps", _taps("memory_taps", self.memory_taps))
        windows = tuple(self.windows) if isinstance(self.windows, (tuple, list)) else ()
        if not windows or not all(type(r) is int and r >= 1 and r % 2 for r in windows):
            raise ValueError(f"{fn}: `windows` must be odd ints >= 1; got {self.windows!r}")
        set_(self, "windows", windows)
        for name, low, strict in (
            ("aggregation_sigma", 0.0, True),
            ("temperature", 0.0, True),
            ("alpha", 0.0, False),
            ("beta", 0.0, False),
            ("blur_sigma", 0.0, True),
            ("prompt_init_std", 0.0, False),
            ("focal_gamma", 0.0, False),
            ("lambda_seg", 0.0, False),
            ("lambda_pal", 0.0, False),
            ("lr", 0.0, True),
        ):
            v = getattr(self, name)
            ok = is_real(v) and math.isfinite(v) and (v > low if strict else v >= low)
            if not ok:
                bound = f"> {low}" if strict else f">= {low}"
                raise ValueError(f"{fn}: `{name}` must be a finite number {bound}; got {v!r}")
            set_(self, name, float(v))
        for name, ok in (
            ("aggregation_border", self.aggregation_border in _BORDERS),
            ("prompt_position", self.prompt_position in _POSITIONS),
            ("blur_padding", self.blur_padding in _PADDINGS),
            ("blur_kernel", type(self.blur_kernel) is int and self.blur_kernel % 2 == 1),
            ("n_ctx", type(self.n_ctx) is int and self.n_ctx >= 0),
            ("adapter_inner_dim", type(self.adapter_inner_dim) is int),
            ("adapter_heads", type(self.adapter_heads) is int and self.adapter_heads >= 1),
            ("chunk_size", self.chunk_size is None or type(self.chunk_size) is int),
        ):
            if not ok:
                raise ValueError(f"{fn}: invalid `{name}`: {getattr(self, name)!r}")
        if self.adapter_inner_dim < 1 or self.adapter_inner_dim % self.adapter_heads:
            raise ValueError(
                f"{fn}: `adapter_inner_dim` ({self.adapter_inner_dim}) must be a positive "
                f"multiple of `adapter_heads` ({self.adapter_heads})"
            )
        suffixes = tuple(self.suffixes) if isinstance(self.suffixes, (tuple, list)) else ()
        if len(suffixes) != 2 or not all(isinstance(s, str) and s for s in suffixes):
            raise ValueError(
                f"{fn}: `suffixes` must be two non-empty texts (normal, anomalous); "
                f"got {self.suffixes!r}"
            )
        set_(self, "suffixes", suffixes)

    @classmethod
    def official_code(cls, **overrides: Any) -> AFCLIPConfig:
        """The official code's behaviour (Faustinaqq/AF-CLIP); ``overrides`` replace fields."""
        return cls(**overrides)

    @classmethod
    def paper(cls, **overrides: Any) -> AFCLIPConfig:
        """The paper's text where it differs from the code (see the class docs).

        Eq. 5 renormalises the window weights over the valid neighbours
        (``aggregation_border="renormalize"``) and Eq. 8 writes the prompt as
        ``[W_1 … W_M][without defect.]`` (``prompt_position="after_sot"``). Everything
        the paper leaves open (σ = 4, the 33-tap smoothing, M = 12, …) is the code's.
        """
        values: dict[str, Any] = {
            "aggregation_border": "renormalize",
            "prompt_position": "after_sot",
        }
        return cls(**{**values, **overrides})

    def replace(self, **changes: Any) -> AFCLIPConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-serialisable values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AFCLIPConfig:
        """Rebuild a config from :meth:`to_dict`'s output; unknown keys are an error."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"AFCLIPConfig.from_dict: unknown fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
