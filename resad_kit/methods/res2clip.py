"""Res²CLIP: the thin composer of the paper's three-branch method (sec. 3, spec §3–4).

``Res2CLIP`` wires the primitives together; it holds no loop, no IO and no printing.

- **Text branch** (eqs. 6–7): the cosine of every query patch with the (adapted) text
  residual ``R̃_t``, plus the global cosine ``⟨f_v^q, R̃_t⟩``.
- **Visual branch** (eqs. 8–9, 33–34): radial-penalised sparsemax retrieval of a reference
  for every patch from the few-shot memory bank, and the magnitude ``‖R̃_{v,l}‖`` of the
  (adapted) visual residual.
- **Residual branch** (eqs. 10–12): the projection of the (adapted) visual residuals onto
  the unit (adapted) text residual, per patch and for the global (CLS) residual.

Maps are averaged over layers at patch resolution, upsampled (bilinear), smoothed and fused
with the weights of the mode (eq. 5); image scores are means of the top 1 % of each branch
map (plus the global terms) and fused likewise. Training-free (Res²CLIP*) every adapter is
the identity and none is built; fine-tuned (Res²CLIP†) the paper's adapters
(:class:`~resad_kit.nn.Res2CLIPAdapters`) act on the residuals, and :meth:`Res2CLIP.losses`
gives the losses of eqs. 13–16 for one phase of the alternating schedule.

Shape legend: ``B`` query images, ``K`` shots, ``N = h·w`` patches, ``M = K·N`` bank rows,
``D`` channels, ``L`` tapped layers, ``H×W`` output pixels.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resad_kit.clip import ClipBackbone, Features, encode_prompt_ensemble
from resad_kit.methods import res2clip_losses as RL
from resad_kit.methods.base import (
    BranchOutput,
    Method,
    OptimizerGroup,
    Prediction,
    TrainingBatch,
)
from resad_kit.methods.config import Res2CLIPConfig
from resad_kit.nn import Res2CLIPAdapters
from resad_kit.ops import (
    fuse,
    gaussian_blur,
    global_residual,
    radial_distance,
    retrieve,
    top_fraction_mean,
    upsample_patches,
)
from resad_kit.ops import losses as L
from resad_kit.ops._validation import check_tensor

__all__ = ["BranchOutput", "Prediction", "Res2CLIP", "TrainingBatch"]

Phase = Literal["visual", "text"]


class _Bank(NamedTuple):
    patches: Tensor  # (L_used, 1, K·N, D), normalised, shot-major
    radius: Tensor  # (K·N,)
    cls: Tensor  # (K, D) raw reference globals
    grid: tuple[int, int]
    shots: int


class _Residuals(NamedTuple):
    query: dict[int, Tensor]  # used or text tap → (B, N, D) normalised query patches
    visual: dict[int, Tensor]  # tap → (B, N, D) raw visual residual R_{v,l}
    cls_query: Tensor  # (B, D) normalised global query feature
    cls: Tensor  # (B, D) raw global residual R_{v,cls}


class Res2CLIP(Method):
    """Res²CLIP composed from its parts: a frozen backbone, a config and (optional) adapters.

    Args:
        backbone: a frozen :class:`~resad_kit.clip.ClipBackbone` (its taps are the
            layers the config's tap positions index).
        config: :class:`~resad_kit.methods.Res2CLIPConfig`; ``None`` is
            ``Res2CLIPConfig.paper()`` (training-free).
        adapters: fine-tuned mode only: the adapters to use (e.g. loaded from a
            checkpoint); ``None`` builds the paper's set, the identity at initialisation.

    Attributes:
        adapters: :class:`~resad_kit.nn.Res2CLIPAdapters` or ``None`` (training-free).
        taps: resolved tap positions per branch (``"text"``, ``"visual"``, ``"residual"``).

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.methods import Res2CLIP
        >>> model = Res2CLIP(ClipBackbone.tiny())
        >>> model.fit_references(torch.randn(2, 3, 64, 64))  # K = 2 shots
        Res2CLIP(mode='training_free', shots=2, taps={'text': (3,), 'visual': (0, 1, 2, 3),
                 'residual': (3,)}, adapters=None)
        >>> pred = model(torch.randn(3, 3, 64, 64))
        >>> pred.image_score.shape, pred.anomaly_map.shape, sorted(pred.branches)
        (torch.Size([3]), torch.Size([3, 64, 64]), ['residual', 'text', 'visual'])
    """

    name = "res2clip"

    def __init__(
        self,
        backbone: ClipBackbone,
        config: Res2CLIPConfig | None = None,
        adapters: Res2CLIPAdapters | None = None,
    ) -> None:
        super().__init__()
        fn = type(self).__name__
        config = Res2CLIPConfig.paper() if config is None else config
        if not isinstance(config, Res2CLIPConfig):
            raise TypeError(f"{fn}: `config` must be a Res2CLIPConfig; got {type(config).__name__}")
        self.backbone = backbone
        self.config = config
        n_taps = len(backbone.layers)
        self.taps = {
            name: self._resolve(name, getattr(config, f"{name}_taps"), n_taps)
            for name in ("text", "visual", "residual")
        }
        if config.mode == "training_free":
            if adapters is not None:
                raise ValueError(
                    f"{fn}: training-free mode uses no adapters; got `adapters`. "
                    "Use Res2CLIPConfig.paper('fine_tuned') to apply them"
                )
        else:
            if adapters is None:
                adapters = Res2CLIPAdapters(backbone.embed_dim, num_layers=n_taps)
            if not isinstance(adapters, Res2CLIPAdapters):
                raise TypeError(
                    f"{fn}: `adapters` must be Res2CLIPAdapters; got {type(adapters).__name__}"
                )
            if len(adapters.visual) != n_taps or adapters.text.dim != backbone.embed_dim:
                raise ValueError(
                    f"{fn}: `adapters` are for {len(adapters.visual)} taps of D="
                    f"{adapters.text.dim} but the backbone has {n_taps} taps of D="
                    f"{backbone.embed_dim}"
                )
            adapters = adapters.to(backbone.device)
        self.adapters = adapters
        self._bank: _Bank | None = None

    # ------------------------------------------------------------------ Method interface

    @property
    def phases(self) -> tuple[str, ...]:
        """``("visual", "text")`` fine-tuned (even 0-based epochs first), ``()`` training-free."""
        return () if self.adapters is None else ("visual", "text")

    @property
    def mode(self) -> str:
        """``config.mode``: ``"training_free"`` or ``"fine_tuned"``."""
        return self.config.mode

    def optimizer_groups(self) -> list[OptimizerGroup]:
        """The official code's four Adam optimisers over the adapters (paper App. F.2).

        ``visual`` (``A_{v,l}``, both phases), ``residual_visual`` (``A^res_{v,l}`` at
        ``lr_local`` and ``A^res_{v,cls}`` at ``lr_global_visual``, visual phase),
        ``residual_text`` (``A_t^res``, text phase) and ``text`` (``A_t``, both phases).
        """
        a, c = self.adapters, self.config
        if a is None:
            return []
        both = ("visual", "text")
        return [
            OptimizerGroup("visual", ((a.visual, c.lr_local),), both),
            OptimizerGroup(
                "residual_visual",
                ((a.residual_local, c.lr_local), (a.residual_global, c.lr_global_visual)),
                ("visual",),
            ),
            OptimizerGroup("residual_text", ((a.residual_text, c.lr_text),), ("text",)),
            OptimizerGroup("text", ((a.text, c.lr_text),), both),
        ]

    def trainable_module(self) -> nn.Module | None:
        """The adapters (``None`` training-free): what a checkpoint stores."""
        return self.adapters

    @staticmethod
    def _resolve(name: str, taps: tuple[int, ...] | str, n: int) -> tuple[int, ...]:
        if taps == "all":
            return tuple(range(n))
        resolved = []
        for t in taps:
            if not -n <= t < n:
                raise ValueError(
                    f"Res2CLIP: `config.{name}_taps` has position {t}, but the backbone has "
                    f"{n} taps (valid: {-n}..{n - 1})"
                )
            resolved.append(t % n)
        return tuple(resolved)

    @property
    def used_taps(self) -> tuple[int, ...]:
        """Tap positions that need retrieval (visual ∪ residual), in order."""
        return tuple(sorted(set(self.taps["visual"]) | set(self.taps["residual"])))

    def __repr__(self) -> str:
        shots = self._bank.shots if self._bank is not None else None
        adapters = None if self.adapters is None else "Res2CLIPAdapters"
        return (
            f"Res2CLIP(mode={self.config.mode!r}, shots={shots}, taps={self.taps}, "
            f"adapters={adapters})"
        )

    # ------------------------------------------------------------------ features

    def extract(self, images: Tensor) -> Features:
        """Backbone features of ``(B, 3, S, S)`` images (frozen, no gradient)."""
        with torch.no_grad():
            return self.backbone(images)

    def _features(self, inputs: Tensor | Features, name: str) -> Features:
        """Checked features on the backbone's device, in float32 (the compute dtype).

        Features stored in float16/bfloat16 (e.g. a half-precision cache) or float64 are
        cast to float32 here, so every branch computes in float32 whatever their dtype.
        """
        if not isinstance(inputs, Features):
            inputs = self.extract(inputs)
        n = len(self.backbone.layers)
        if len(inputs.patches) != n:
            raise ValueError(
                f"Res2CLIP: `{name}` has {len(inputs.patches)} layers of patches but the "
                f"backbone taps {n} layers {self.backbone.layers}"
            )
        cls = check_tensor("Res2CLIP", f"{name}.cls", inputs.cls, ndim=2, shape_doc="(B, D)")
        b, d = cls.shape
        h, w = inputs.grid
        for i, p in enumerate(inputs.patches):
            check_tensor("Res2CLIP", f"{name}.patches[{i}]", p, shape_doc="(B, N, D)")
            if tuple(p.shape) != (b, h * w, d):
                raise ValueError(
                    f"Res2CLIP: `{name}` patches must be (B, N, D) = {(b, h * w, d)} "
                    f"for cls {(b, d)} and grid {inputs.grid}; got {tuple(p.shape)}"
                )
        device = self.backbone.device

        def f32(x: Tensor) -> Tensor:
            return x.to(device, torch.float32)

        tap_cls = None if inputs.tap_cls is None else [f32(t) for t in inputs.tap_cls]
        return inputs._replace(
            patches=[f32(p) for p in inputs.patches], cls=f32(cls), tap_cls=tap_cls
        )

    # ------------------------------------------------------------------ references

    def fit_references(self, references: Tensor | Features) -> Res2CLIP:
        """Build the memory bank from ``K ≥ 1`` normal reference images (spec §3.3).

        Per used layer the reference patch features are ℓ2-normalised and concatenated
        shot-major into an ``(M, D)`` bank (``M = K·N``); the radial distance of every
        bank row and the reference global features are kept for eqs. 8 and 10.

        Args:
            references: ``(K, 3, S, S)`` images, or their :class:`~resad_kit.clip.Features`.

        Returns:
            ``self``, so that ``model.fit_references(refs)(images)`` works.
        """
        feats = self._features(references, "references")
        k = feats.cls.shape[0]
        if k < 1:
            raise ValueError("Res2CLIP.fit_references: need at least one reference image")
        h, w = feats.grid
        device = self.backbone.device
        patches = torch.stack(
            [F.normalize(feats.patches[t].to(device), dim=-1) for t in self.used_taps]
        )  # (L, K, N, D)
        self._bank = _Bank(
            patches=patches.reshape(len(self.used_taps), 1, k * h * w, -1),
            radius=radial_distance(h, w, device=device).repeat(k),
            cls=feats.cls.to(device),
            grid=(h, w),
            shots=k,
        )
        return self

    # ------------------------------------------------------------------ shared pieces

    def _text_residual(self) -> Tensor:
        c = self.config
        return encode_prompt_ensemble(
            self.backbone,
            c.class_name,
            extra_anomaly_phrase=c.extra_anomaly_phrase,
            normalize_before_mean=c.normalize_before_mean,
            unit_residual=c.unit_text_residual,
        ).residual

    def _residuals(
        self, query: Features, bank: Tensor, radius: Tensor, ref_cls: Tensor
    ) -> _Residuals:
        """Raw residuals (no gradient): ``bank`` is ``(L, 1|B, M, D)`` normalised."""
        c = self.config
        device = self.backbone.device
        needed = sorted(set(self.used_taps) | set(self.taps["text"]))  # not the unused taps
        q = {t: F.normalize(query.patches[t].to(device), dim=-1) for t in needed}
        r_query = radial_distance(*query.grid, device=device)
        stacked = torch.stack([q[t] for t in self.used_taps])  # (L, B, N, D)
        reference = retrieve(
            stacked,
            bank,
            query_radius=r_query,
            bank_radius=radius,
            gamma=c.gamma,
            k=c.retrieval_k,
            chunk_size=c.chunk_size,
            normalize="query",
        ).reference
        reference = F.normalize(reference, dim=-1)  # F̂_ref (spec §3.3)
        visual = {t: stacked[i] - reference[i] for i, t in enumerate(self.used_taps)}
        cls = query.cls.to(device)
        global_res = global_residual(cls, ref_cls, normalized=not c.raw_global_residual)
        return _Residuals(q, visual, F.normalize(cls, dim=-1), global_res)

    def _adapt_local(
        self, family: str, tap: int, residual: Tensor, grid: tuple[int, int]
    ) -> Tensor:
        if self.adapters is None:
            return residual
        return getattr(self.adapters, family)[tap](residual, grid)

    def _adapt_global(self, name: str, residual: Tensor) -> Tensor:
        return residual if self.adapters is None else getattr(self.adapters, name)(residual)

    def _finish_map(
        self, patch_scores: Tensor, size: tuple[int, int], grid: tuple[int, int]
    ) -> Tensor:
        m = upsample_patches(patch_scores, size, grid)
        if self.config.smooth_branch_maps:
            m = gaussian_blur(m, self.config.blur_sigma, self.config.blur_kernel)
        return m

    # ------------------------------------------------------------------ inference

    def forward(
        self, inputs: Tensor | Features, *, output_size: int | tuple[int, int] | None = None
    ) -> Prediction:
        """Anomaly maps and scores of ``B`` query images against the fitted references.

        Features of any float dtype are cast to float32 first (every branch computes in
        float32). Each image's result does not depend on the other images of the batch,
        but is equal to the one-image result only up to float32 rounding (about 1e-7):
        the blur's convolution, the adapters and the backbone may pick other kernels for
        another batch size.

        Args:
            inputs: ``(B, 3, S, S)`` images or their :class:`~resad_kit.clip.Features`
                (float16, bfloat16, float32 or float64).
            output_size: map size ``(H, W)``; default the input image size, or
                ``grid · patch_size`` for features.

        Returns:
            :class:`Prediction` (float32) with the fused score and map and every branch's.

        Raises:
            RuntimeError: before :meth:`fit_references`.
            ValueError: for features with the wrong number of layers, inconsistent
                shapes, a non-float dtype, or a grid other than the references'.
        """
        if self._bank is None:
            raise RuntimeError(
                "Res2CLIP.forward: no references; call model.fit_references(images) first"
            )
        feats = self._features(inputs, "inputs")
        if feats.grid != self._bank.grid:
            raise ValueError(
                f"Res2CLIP.forward: query grid {feats.grid} differs from the references' "
                f"{self._bank.grid}; use one image size for both"
            )
        size = self._output_size(inputs, feats, output_size)
        c, bank = self.config, self._bank
        res = self._residuals(feats, bank.patches, bank.radius, bank.cls)
        r_t = self._text_residual()
        t_text = F.normalize(self._adapt_global("text", r_t), dim=-1)
        t_res = F.normalize(self._adapt_global("residual_text", r_t), dim=-1)

        text_local = torch.stack([res.query[t] @ t_text for t in self.taps["text"]]).mean(0)
        text_global = res.cls_query @ t_text
        vis_local = torch.stack(
            [
                self._adapt_local("visual", t, res.visual[t], feats.grid).norm(dim=-1)
                for t in self.taps["visual"]
            ]
        ).mean(0)
        clamp = (lambda x: x.clamp_min(0)) if c.clamp_residual_projection else (lambda x: x)
        res_local = torch.stack(
            [
                clamp(self._adapt_local("residual_local", t, res.visual[t], feats.grid) @ t_res)
                for t in self.taps["residual"]
            ]
        ).mean(0)
        res_global = clamp(self._adapt_global("residual_global", res.cls) @ t_res)

        maps = {
            "text": self._finish_map(text_local, size, feats.grid),
            "visual": self._finish_map(vis_local, size, feats.grid),
            "residual": self._finish_map(res_local, size, feats.grid),
        }
        top = {k: top_fraction_mean(m, c.top_fraction) for k, m in maps.items()}
        scores = {
            "text": 0.5 * text_global + 0.5 * top["text"],
            "visual": top["visual"],
            "residual": 0.5 * res_global + 0.5 * top["residual"],
        }
        fused = fuse(maps, dict(zip(maps, c.pixel_weights, strict=True)))
        if c.smooth_fused_map:
            fused = gaussian_blur(fused, c.blur_sigma, c.blur_kernel)
        image = fuse(scores, dict(zip(scores, c.image_weights, strict=True)))
        branches = {k: BranchOutput(maps[k], scores[k]) for k in maps}
        return Prediction(image, fused, branches)

    def _output_size(
        self,
        inputs: Tensor | Features,
        feats: Features,
        output_size: int | tuple[int, int] | None,
    ) -> tuple[int, int]:
        if output_size is None:
            if isinstance(inputs, Tensor):
                return int(inputs.shape[-2]), int(inputs.shape[-1])
            p = self.backbone.patch_size
            return feats.grid[0] * p, feats.grid[1] * p
        if isinstance(output_size, int):
            return output_size, output_size
        return int(output_size[0]), int(output_size[1])

    # ------------------------------------------------------------------ training

    def losses(self, batch: TrainingBatch, phase: Phase) -> dict[str, Tensor]:
        """Training losses of one step of the alternating schedule (eqs. 13–16, spec §4.3–4.4).

        Raw residuals come from the frozen backbone under ``torch.no_grad``; each query is
        matched against its own 1-shot reference (sparsemax + radial penalty). Pixel terms
        are computed on maps upsampled to the mask size; the regulariser of eq. 41 at patch
        resolution. In ``phase="visual"`` (even 0-based epochs) the residual visual adapters
        are trained and ``A_t^res`` is evaluated without gradient; in ``phase="text"`` the
        reverse. ``A_t`` and ``A_{v,l}`` are trained in both phases. The parameters that get
        gradients are exactly those of ``adapters.phase_modules(phase)``.

        Args:
            batch: a :class:`TrainingBatch`.
            phase: ``"visual"`` or ``"text"``.

        Returns:
            ``{"text": L_text, "visual": L_vis, "residual": L_res, "total": their sum}``.
        """
        fn = "Res2CLIP.losses"
        if self.adapters is None:
            raise ValueError(f"{fn}: training-free mode has no adapters to train")
        if phase not in ("visual", "text"):
            raise ValueError(f"{fn}: `phase` must be 'visual' or 'text'; got {phase!r}")
        if not isinstance(batch, TrainingBatch):
            raise TypeError(f"{fn}: `batch` must be a TrainingBatch; got {type(batch).__name__}")
        c, a = self.config, self.adapters
        query = self._features(batch.query, "batch.query")
        ref = self._features(batch.reference, "batch.reference")
        b = query.cls.shape[0]
        masks = check_tensor(fn, "batch.masks", batch.masks, ndim=3, shape_doc="(B, H, W)")
        if ref.cls.shape[0] != b or masks.shape[0] != b or ref.grid != query.grid:
            raise ValueError(
                f"{fn}: query ({b} images, grid {query.grid}), reference "
                f"({ref.cls.shape[0]}, grid {ref.grid}) and masks {tuple(masks.shape)} must "
                "agree in batch size and grid"
            )
        device = self.backbone.device
        masks = (masks.to(device) > 0.5).float()
        labels = masks.flatten(1).amax(1)
        size, grid = tuple(masks.shape[-2:]), query.grid

        with torch.no_grad():
            bank = torch.stack(
                [F.normalize(ref.patches[t].to(device), dim=-1) for t in self.used_taps]
            )  # (L, B, N, D): one 1-shot bank per query
            radius = radial_distance(*grid, device=device)
            res = self._residuals(query, bank, radius, ref.cls.to(device)[:, None])
            r_t = self._text_residual()

        def up(x: Tensor) -> Tensor:
            return upsample_patches(x, size, grid)

        reduction = {"margin": c.margin, "reduction": c.loss_reduction}
        # Text branch (eq. 13).
        t_text = a.text(r_t)
        t_unit = F.normalize(t_text, dim=-1)
        loss_text = RL.text_branch_loss(
            res.cls_query @ t_unit,
            [up(res.query[t] @ t_unit) for t in self.taps["text"]],
            t_text,
            r_t,
            labels,
            masks,
            **reduction,
        )
        # Visual branch (eq. 14).
        adapted = [a.visual[t](res.visual[t], grid).norm(dim=-1) for t in self.taps["visual"]]
        raw = [res.visual[t].norm(dim=-1) for t in self.taps["visual"]]
        loss_vis = RL.visual_branch_loss(
            [up(x) for x in adapted], [up(x) for x in raw], masks, reduction=c.loss_reduction
        )
        # Residual branch (eq. 15), one phase.
        with torch.set_grad_enabled(phase == "text"):
            t_res = a.residual_text(r_t)
        with torch.set_grad_enabled(phase == "visual"):
            res_local = {t: a.residual_local[t](res.visual[t], grid) for t in self.taps["residual"]}
            res_cls = a.residual_global(res.cls)
        if phase == "visual":
            reg = L.magnitude_regularizer(res_cls.norm(dim=-1), res.cls.norm(dim=-1))
            for t in self.taps["residual"]:
                reg = reg + L.magnitude_regularizer(
                    res_local[t].norm(dim=-1), res.visual[t].norm(dim=-1)
                )
        else:
            reg = L.direction_regularizer(t_res, r_t)
        loss_res = RL.residual_branch_loss(
            L.stop_gradient_projection(res_cls, t_res, update=phase),
            res.cls.norm(dim=-1),
            [
                up(L.stop_gradient_projection(res_local[t], t_res, update=phase))
                for t in self.taps["residual"]
            ],
            [up(res.visual[t].norm(dim=-1)) for t in self.taps["residual"]],
            labels,
            masks,
            regularizer=reg,
            **reduction,
        )
        total = loss_text + loss_vis + loss_res
        return {"text": loss_text, "visual": loss_vis, "residual": loss_res, "total": total}
