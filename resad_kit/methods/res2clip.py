"""Res²CLIP: the thin composer of the paper's three-branch method (sec. 3).

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

Every score is an op of :mod:`resad_kit.ops` (run with the ops' checks off; the method
checks its inputs once): the bank, retrieval, residuals and per-layer branch scores are in
``res2clip_residuals``, the body of :meth:`Res2CLIP.losses` in ``res2clip_training``, the
input checks in ``res2clip_inputs``. ``forward(..., return_intermediates=True)`` exposes
the per-layer maps, retrieval weights, matched references, residuals and directions.

Shape legend: ``B`` query images, ``K`` shots, ``N = h·w`` patches, ``M = K·N`` bank rows,
``D`` channels, ``L`` tapped layers, ``H×W`` output pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from resad_kit.clip import ClipBackbone, Features, encode_prompt_ensemble
from resad_kit.methods.base import (
    BranchOutput,
    Method,
    OptimizerGroup,
    Prediction,
    TrainingBatch,
)
from resad_kit.methods.config import Res2CLIPConfig
from resad_kit.methods.res2clip_inputs import checked_features, resolve_output_size
from resad_kit.methods.res2clip_residuals import (
    Bank,
    branch_layers,
    build_bank,
    compute_residuals,
    intermediates,
)
from resad_kit.methods.res2clip_training import res2clip_losses
from resad_kit.nn import Res2CLIPAdapters
from resad_kit.ops import fuse, gaussian_blur, top_fraction_mean, upsample_patches
from resad_kit.ops._phases import PHASES, Phase
from resad_kit.ops._validation import check_tensor, checks

__all__ = ["BranchOutput", "Prediction", "Res2CLIP", "TrainingBatch"]


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
        if backbone.config.tap_output != "projected":
            raise ValueError(
                f"{fn}: Res²CLIP scores projected patch tokens (eq. 8 in the joint space); "
                f"got a backbone with tap_output={backbone.config.tap_output!r}. Build it "
                "with BackboneConfig(tap_output='projected') (the default)"
            )
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
        self._bank: Bank | None = None

    # ------------------------------------------------------------------ Method interface

    @property
    def phases(self) -> tuple[str, ...]:
        """``("visual", "text")`` fine-tuned (even 0-based epochs first), ``()`` training-free."""
        return () if self.adapters is None else PHASES

    @property
    def mode(self) -> str:
        """``config.mode``: ``"training_free"`` or ``"fine_tuned"``."""
        return self.config.mode

    def optimizer_groups(self) -> list[OptimizerGroup]:
        """The official code's four Adam optimisers over the adapters (paper App. F.2).

        ``visual`` (``A_{v,l}``, both phases), ``residual_visual`` (``A^res_{v,l}`` at
        ``lr_local`` and ``A^res_{v,cls}`` at ``lr_global_visual``, visual phase),
        ``residual_text`` (``A_t^res``, text phase) and ``text`` (``A_t``, both phases).
        The learning rates are the config's (``lr_local``, ``lr_text``,
        ``lr_global_visual``): this is where they are used, the engine builds its
        optimisers from these groups. ``[]`` training-free.
        """
        a, c = self.adapters, self.config
        if a is None:
            return []
        both = PHASES
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
        if not isinstance(inputs, Features):
            inputs = self.extract(inputs)
        return checked_features(inputs, name, self.backbone)

    # ------------------------------------------------------------------ references

    def fit_references(self, references: Tensor | Features) -> Res2CLIP:
        """Build the memory bank from ``K ≥ 1`` normal reference images (sec. 3.2.3).

        Per used layer the reference patch features are ℓ2-normalised and concatenated
        shot-major into an ``(M, D)`` bank (``M = K·N``); the radial distance of every
        bank row and the reference global features are kept for eqs. 8 and 10.

        Args:
            references: ``(K, 3, S, S)`` images, or their :class:`~resad_kit.clip.Features`.

        Returns:
            ``self``, so that ``model.fit_references(refs)(images)`` works.
        """
        feats = self._features(references, "references")
        if feats.cls.shape[0] < 1:
            raise ValueError("Res2CLIP.fit_references: need at least one reference image")
        with checks(False):
            self._bank = build_bank(feats, self.used_taps)
        return self

    # ------------------------------------------------------------------ inference

    def _text_residual(self) -> Tensor:
        c = self.config
        return encode_prompt_ensemble(
            self.backbone,
            c.class_name,
            extra_anomaly_phrase=c.extra_anomaly_phrase,
            normalize_before_mean=c.normalize_before_mean,
            unit_residual=c.unit_text_residual,
        ).residual

    def _finish_map(self, layers: dict[int, Tensor], size: tuple[int, int], grid) -> Tensor:
        """Mean over layers at patch resolution, upsampled and (optionally) smoothed."""
        m = upsample_patches(torch.stack(list(layers.values())).mean(0), size, grid)
        if self.config.smooth_branch_maps:
            m = gaussian_blur(m, self.config.blur_sigma, self.config.blur_kernel)
        return m

    def forward(
        self,
        inputs: Tensor | Features,
        *,
        output_size: int | tuple[int, int] | None = None,
        return_intermediates: bool = False,
    ) -> Prediction:
        """Anomaly maps and scores of ``B`` query images against the fitted references.

        Features of any float dtype are cast to float32 first (every branch computes in
        float32). Each image's result does not depend on the other images of the batch,
        but is equal to the one-image result only up to float32 rounding (about 1e-7):
        the blur's convolution, the adapters and the backbone may pick other kernels for
        another batch size. The inputs are validated here (finiteness only while
        ``resad_kit.checks()`` is on); the ops run with their checks off.

        Args:
            inputs: ``(B, 3, S, S)`` images or their :class:`~resad_kit.clip.Features`
                (float16, bfloat16, float32 or float64).
            output_size: map size ``(H, W)``; default the input image size, or
                ``grid · patch_size`` for features.
            return_intermediates: also return the inner tensors (below) in
                ``Prediction.intermediates``; otherwise it is ``None``.

        Returns:
            :class:`Prediction` (float32) with the fused score and map and every branch's.
            With ``return_intermediates=True`` its ``intermediates`` hold (``tap`` is a
            tap position, the keys of ``model.taps``; ``dict[tap, ...]`` lists the taps in
            the order of ``model.taps`` or ``model.used_taps``):

            - ``"grid"``: the patch grid ``(h, w)``;
            - ``"retrieval/reference"``: ``dict[tap, (B, N, D)]`` over ``used_taps``, the
              retrieved references ``W·B̂`` (:func:`~resad_kit.ops.retrieve`, eq. 34; not
              re-normalised), and ``"retrieval/weights"``: ``dict[tap, SparseWeights]``,
              the sparsemax weights (eq. 33) with the matched bank indices
              ``(B, N, S)`` (bank row ``k·N + n`` is patch ``n`` of reference ``k``);
            - ``"visual/residuals"``: ``dict[tap, (B, N, D)]`` over ``used_taps``, the raw
              visual residuals ``R_{v,l}`` (:func:`~resad_kit.ops.visual_residual`), and
              ``"residual/cls"``: ``(B, D)`` the raw global residual ``R_{v,cls}``;
            - ``"text/R_t"``: ``(D,)`` the text residual ``R_t``; ``"text/t_text"`` and
              ``"residual/t_res"``: ``(D,)`` the adapted directions ``A_t(R_t)`` and
              ``A_t^res(R_t)`` (not unit: the scores normalise them; training-free both
              are ``R_t``);
            - ``"visual/adapted"``, ``"residual/adapted"``: ``dict[tap, (B, N, D)]`` over
              the visual and residual taps, the adapted residuals ``A_{v,l}(R_{v,l})``
              and ``A^res_{v,l}(R_{v,l})``; ``"residual/adapted_cls"``: ``(B, D)``
              ``A^res_{v,cls}(R_{v,cls})`` (training-free: the raw residuals);
            - ``"text/layers"``, ``"visual/layers"``, ``"residual/layers"``:
              ``dict[tap, (B, N)]``, each branch's patch scores per layer before the
              layer mean and upsampling (eqs. 6, 9, 11: cosine, magnitude, projection,
              clamped at 0 with ``clamp_residual_projection``);
            - ``"text/global"``, ``"residual/global"``: ``(B,)`` the global terms
              ``⟨f^q, R̃_t⟩`` (eq. 7) and ``R̃_{v,cls}·R̂̃_t`` (eq. 12, clamped likewise).

            Each branch map is ``gaussian_blur(upsample_patches(mean of its layers))``
            (the blur when ``smooth_branch_maps``); docs/methods.md rebuilds the maps and
            scores from these.

        Raises:
            RuntimeError: before :meth:`fit_references`.
            ValueError: for features with the wrong number of layers, inconsistent
                shapes, a non-float dtype, non-finite values, or a grid other than the
                references'.
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
        size = resolve_output_size(inputs, feats, output_size, self.backbone.patch_size)
        c, bank, grid = self.config, self._bank, feats.grid
        with checks(False):
            res = compute_residuals(feats, bank.patches, bank.radius, bank.cls, self.used_taps, c)
            r_t = self._text_residual()
            layers = branch_layers(feats, res, r_t, self.taps, self.adapters, c)
            maps = {
                "text": self._finish_map(layers.text, size, grid),
                "visual": self._finish_map(layers.visual, size, grid),
                "residual": self._finish_map(layers.residual, size, grid),
            }
            top = {k: top_fraction_mean(m, c.top_fraction) for k, m in maps.items()}
            scores = {
                "text": 0.5 * layers.text_global + 0.5 * top["text"],
                "visual": top["visual"],
                "residual": 0.5 * layers.residual_global + 0.5 * top["residual"],
            }
            fused = fuse(maps, dict(zip(maps, c.pixel_weights, strict=True)))
            if c.smooth_fused_map:
                fused = gaussian_blur(fused, c.blur_sigma, c.blur_kernel)
            image = fuse(scores, dict(zip(scores, c.image_weights, strict=True)))
        branches = {k: BranchOutput(maps[k], scores[k]) for k in maps}
        extra = intermediates(res, layers, r_t, grid) if return_intermediates else None
        return Prediction(image, fused, branches, extra)

    # ------------------------------------------------------------------ training

    def losses(self, batch: TrainingBatch, phase: Phase) -> dict[str, Tensor]:
        """Training losses of one step of the alternating schedule (eqs. 13–16).

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
        if phase not in PHASES:
            raise ValueError(f"{fn}: `phase` must be one of {PHASES}; got {phase!r}")
        if not isinstance(batch, TrainingBatch):
            raise TypeError(f"{fn}: `batch` must be a TrainingBatch; got {type(batch).__name__}")
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
        masks = (masks.to(self.backbone.device) > 0.5).float()
        with checks(False):
            with torch.no_grad():
                r_t = self._text_residual()
            return res2clip_losses(self, query, ref, masks, r_t, phase)
