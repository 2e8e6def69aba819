"""Configuration of :class:`~resad_kit.methods.finegrainedad.FineGrainedAD`.

Sources: Fan et al., "Towards Fine-Grained Vision-Language Alignment for Few-Shot Anomaly
Detection" ("the paper") and its released code, RetoFan233/FineGrainedAD at commit
``aa6b041`` ("the code": ``PromptAD/model.py``, ``PromptAD/clusters.py``,
``PromptAD/CLIPAD/transformer.py``, ``train_seg_finegrained_patch.py``). Where they differ,
:meth:`FineGrainedADConfig.official_code` follows the code and :meth:`FineGrainedADConfig.paper`
the paper; docs/finegrainedad.md lists the differences.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from resad_kit.clip.mllp import ATTR_MOE_LEVELS
from resad_kit.nn import QueryFormerConfig

__all__ = ["FineGrainedADConfig"]


@dataclasses.dataclass(frozen=True)
class FineGrainedADConfig:
    """Every setting of the FineGrainedAD composer, with its source.

    Attributes:
        memory_layers: 1-based blocks whose **ordinary-stream** patch tokens (no ``LN_post``)
            form the two memory banks of Eq. 1. Code: forward hooks on ``resblocks[2]`` and
            ``resblocks[7]`` of ``V2VTransformer`` → blocks 3 and 8 of ViT-B-16-plus-240.
        vv_all_blocks: V-V attention in every block for the patch tokens (code: "surgery
            12", all 12 blocks of ViT-B); the tokens are the V-V stream after the last
            block through ``LN_post`` and ``proj``, the global feature the ordinary CLS
            through ``LN_post`` and ``proj``.
        n_ctx: learnable normal context tokens (code: 4).
        n_abnormal: learnable abnormal prompts per group ``N_ab`` (paper §4.4 + code: 4).
        n_ctx_abnormal: learnable tokens per abnormal prompt (code: 1).
        prompt_init_std: σ of the prompt initialisation (code: 0.02).
        caption_seed: seed of the random state/location choices of the component prompts.
        query_former: :class:`~resad_kit.nn.QueryFormerConfig` (code: own-group attention,
            no loss; paper: all groups, with loss).
        temperature: ``"raw"``: the code multiplies the cosines by CLIP's ``logit_scale``
            parameter itself (ln 100 ≈ 4.6 for this backbone); ``"exp"``: ``exp(logit_scale)``
            (= 100), the paper's exp(⟨·⟩/τ).
        gamma: extra weight of a group's matched region (paper §4.4 + code: 1.5).
        cluster_k: density neighbours of the two DPC-KNN stages (code: 8, 5).
        semantic_centers: the paper's initial cluster centres (§3.4, the tokens most similar
            to the prompt features; :func:`~resad_kit.ops.progressive_region_aggregation`);
            the released code disables them (top-``K`` density-peak scores).
        lambda_mean: weight λ₁ of ℓ_mean (code ``--lambda1``: 0.001).
        lambda_reg: weight of ℓ_reg (paper §4.4: 1).
        triplet_margin: margin ε of ℓ_trip (PromptAD ``TripletLoss(margin=1.0)``; paper: 1).
        lr: SGD learning rate (code: 2e-3); momentum 0.9, weight decay 5e-4 and the cosine
            to 1e-5 over 100 epochs are the engine's (``TrainConfig.finegrainedad()``).
        blur_sigma: σ of the Gaussian smoothing of the upsampled map (code: 4).
        eps: added to both denominators of the harmonic means (Eqs. 7-8).
        image_reweight: Eq. 6, the image-level re-weighting of the PAD map (paper: on;
            absent from the code: off). Read as ``M_p = a / Σ_k a_k ⊙ M̂_p`` with ``a`` the
            Eq. 4 anomaly probability of every token against the **image** group's prompts
            (see :meth:`FineGrainedAD.forward`).
        attr_moe: the Attr-MoE gates of the MLLP prompts (:class:`~resad_kit.clip.mllp.
            MultiLevelPrompts`): ``"image"`` (code: the image group's prompts get the gated
            relation/colour/texture/shape prompts), ``"components"`` (paper §3.3: the
            component-level prompts, with their colour/texture/shape) or ``"none"``.

    Example:
        >>> from resad_kit.methods.finegrainedad_config import FineGrainedADConfig
        >>> FineGrainedADConfig.official_code().temperature, FineGrainedADConfig.paper().temperature
        ('raw', 'exp')
    """

    memory_layers: tuple[int, int] = (3, 8)
    vv_all_blocks: bool = True
    n_ctx: int = 4
    n_abnormal: int = 4
    n_ctx_abnormal: int = 1
    prompt_init_std: float = 0.02
    caption_seed: int = 0
    query_former: QueryFormerConfig = dataclasses.field(
        default_factory=QueryFormerConfig.official_code
    )
    temperature: Literal["raw", "exp"] = "raw"
    gamma: float = 1.5
    cluster_k: tuple[int, int] = (8, 5)
    semantic_centers: bool = False
    lambda_mean: float = 0.001
    lambda_reg: float = 1.0
    triplet_margin: float = 1.0
    lr: float = 2e-3
    blur_sigma: float = 4.0
    eps: float = 1e-8
    image_reweight: bool = False
    attr_moe: Literal["none", "image", "components"] = "image"

    def __post_init__(self) -> None:
        fn = "FineGrainedADConfig"
        layers = self.memory_layers
        if (
            not isinstance(layers, (tuple, list))
            or len(layers) != 2
            or not all(type(v) is int and v >= 1 for v in layers)
        ):
            raise ValueError(
                f"{fn}: `memory_layers` must be two 1-based block indices; got {layers!r}"
            )
        object.__setattr__(self, "memory_layers", tuple(layers))
        for name in ("n_ctx", "n_abnormal", "n_ctx_abnormal"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{fn}: `{name}` must be a positive int; got {value!r}")
        if self.temperature not in ("raw", "exp"):
            raise ValueError(
                f"{fn}: `temperature` must be 'raw' or 'exp'; got {self.temperature!r}"
            )
        for flag in ("image_reweight", "semantic_centers"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{fn}: `{flag}` must be a bool; got {getattr(self, flag)!r}")
        if self.attr_moe not in ATTR_MOE_LEVELS:
            raise ValueError(
                f"{fn}: `attr_moe` must be one of {ATTR_MOE_LEVELS}; got {self.attr_moe!r}"
            )
        if not isinstance(self.query_former, QueryFormerConfig):
            raise ValueError(f"{fn}: `query_former` must be a QueryFormerConfig")
        for name in (
            "gamma",
            "lambda_mean",
            "lambda_reg",
            "triplet_margin",
            "lr",
            "blur_sigma",
            "eps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{fn}: `{name}` must be a number ≥ 0; got {value!r}")
        k = self.cluster_k
        if (
            not isinstance(k, (tuple, list))
            or len(k) != 2
            or not all(type(v) is int and v >= 1 for v in k)
        ):
            raise ValueError(f"{fn}: `cluster_k` must be two positive ints; got {k!r}")
        object.__setattr__(self, "cluster_k", tuple(k))

    @classmethod
    def official_code(cls) -> FineGrainedADConfig:
        """The released code: raw ``logit_scale``, own-group Query Former without loss, no
        Eq. 6, Attr-MoE on the image group."""
        return cls()

    @classmethod
    def paper(cls) -> FineGrainedADConfig:
        """The paper's text: ``exp`` temperature, Query Former over all groups with its loss,
        Eq. 6, Attr-MoE on the component-level prompts, semantic initial cluster centres."""
        return cls(
            temperature="exp",
            query_former=QueryFormerConfig.paper(),
            image_reweight=True,
            attr_moe="components",
            semantic_centers=True,
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-serialisable values."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}
        out["query_former"] = dataclasses.asdict(self.query_former)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FineGrainedADConfig:
        """Rebuild a config from :meth:`to_dict`'s output; unknown keys are an error."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"FineGrainedADConfig.from_dict: unknown fields {unknown}")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if isinstance(fields.get("query_former"), dict):
            fields["query_former"] = QueryFormerConfig(**fields["query_former"])
        return cls(**fields)
