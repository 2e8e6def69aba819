"""FineGrainedAD through the engine: per-category, per-shot training and the protocol.

FineGrainedAD (:class:`~resad_kit.methods.finegrainedad.FineGrainedAD`) trains one model
per category on the ``K`` normal shots it is evaluated with (no auxiliary data set), and
its captions are the category's. The engine's pieces for it:

- :func:`train_on_shots`: ``fit_references`` (memory banks, region weights) then
  ``TrainConfig.epochs`` steps of :meth:`FineGrainedAD.losses` on the ``K`` shots, one step
  per epoch with all ``K`` as the batch (the released code's full batch), with the
  optimiser and schedule of :func:`~resad_kit.engine.optimization.build_optimization`
  (:meth:`TrainConfig.finegrainedad`: SGD 2e-3, momentum 0.9, weight decay 5e-4, cosine to
  1e-5 over 100 epochs). The last epoch is kept: no model selection on the test set,
  unless ``select_epoch_on_test`` is given (below).
- :class:`FewShotFineGrainedAD`: a :class:`~resad_kit.methods.Method` the protocol can
  run: its ``fit_references`` builds a fresh model (seeded) and trains it on the shots;
  inputs are :class:`~resad_kit.clip.image_backbone.ImageBackbone` features (the images).
- :func:`evaluate_finegrainedad`: :func:`~resad_kit.engine.run_evaluation` category by
  category, each with the model of its own captions.

**Best-on-test epoch** (``select_epoch_on_test``, off by default): the released code
(``train_seg_finegrained_patch.py``) evaluates on the test set after every epoch and keeps
the epoch of the best pixel AUROC. This is model selection on the test set: its numbers
are optimistic. It is offered only under that name; it emits a ``UserWarning`` and its
results carry the method name :data:`TEST_SELECTED_METHOD`
(``"finegrainedad_test_selected"``), so that ``results.csv`` and ``table.md`` show them
under that name, apart from FineGrainedAD's rows and without the paper's numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from resad_kit.clip import Features
from resad_kit.clip.image_backbone import ImageBackbone
from resad_kit.clip.mfsc import CategoryCaptions, load_captions, load_vocabularies
from resad_kit.data import AnomalyDataset
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.optimization import build_optimization, step_optimizers
from resad_kit.engine.protocol import DatasetSpec, run_evaluation
from resad_kit.engine.results import CategoryResult
from resad_kit.engine.train_config import TrainConfig
from resad_kit.methods import Method, Prediction, TrainingBatch
from resad_kit.methods.finegrainedad import FineGrainedAD, FineGrainedADConfig
from resad_kit.metrics import pixel_auroc

__all__ = [
    "TEST_SELECTED_METHOD", "FewShotFineGrainedAD", "evaluate_finegrainedad", "train_on_shots"
]  # fmt: skip

#: The method name of results whose epoch was selected on the test set (optimistic).
TEST_SELECTED_METHOD = "finegrainedad_test_selected"
TEST_SELECTION_WARNING = (
    "select_epoch_on_test: the training epoch is selected on the TEST set (best pixel AUROC, "
    "as the released FineGrainedAD code); the results are optimistic and not comparable to "
    f"a clean run; they are labelled method {TEST_SELECTED_METHOD!r}"
)


def _check_test_set(fn: str, test: object) -> tuple[Tensor, Tensor]:
    if (
        not isinstance(test, (tuple, list))
        or len(test) != 2
        or not all(isinstance(t, Tensor) for t in test)
        or test[0].ndim != 4
        or test[1].ndim != 3
        or test[0].shape[0] != test[1].shape[0]
    ):
        raise ValueError(
            f"{fn}: `select_epoch_on_test` must be (images (M, 3, H, W), masks (M, h, w)) of "
            "the test set"
        )
    return test[0], test[1]


def _test_pixel_auroc(model: FineGrainedAD, images: Tensor, masks: Tensor) -> float:
    """Pixel AUROC of ``model``'s maps (at the masks' size) on the test set."""
    size = tuple(masks.shape[-2:])
    with torch.no_grad():
        maps = [
            model(images[i : i + 8], output_size=size).anomaly_map.float().cpu()
            for i in range(0, images.shape[0], 8)
        ]
    return pixel_auroc(torch.cat(maps), masks.cpu() > 0.5)


def train_on_shots(
    model: FineGrainedAD,
    images: Tensor,
    config: TrainConfig | None = None,
    *,
    select_epoch_on_test: tuple[Tensor, Tensor] | None = None,
) -> tuple[dict[str, Any], ...]:
    """Fit ``model`` to its ``K`` shots and train it on them; returns the loss history.

    Args:
        model: a fresh :class:`~resad_kit.methods.finegrainedad.FineGrainedAD`.
        images: ``(K, 3, H, W)`` preprocessed normal shots, on the backbone's device.
        config: :class:`TrainConfig` (default :meth:`TrainConfig.finegrainedad`); its
            optimiser, momentum, weight decay, schedule, ``epochs`` and ``grad_clip`` are
            used; every epoch is one step on all ``K`` shots (``batch_size`` is not used).
        select_epoch_on_test: ``None`` (default): the last epoch is kept. ``(images,
            masks)`` of the **test set** (``(M, 3, H, W)`` preprocessed, ``(M, h, w)``):
            after every epoch the pixel AUROC of the maps (at ``(h, w)``) is computed and
            the prompts and Query Former of the best epoch (the first on a tie) are kept,
            as the released code. Optimistic; emits a ``UserWarning``.

    Returns:
        One dict per step: ``epoch``, the loss terms (``clip``, ``trip``, ``mean``, ``reg``,
        ``total``, …) and ``lr``; with ``select_epoch_on_test`` also ``test_P-AUROC`` and
        ``selected`` (``True`` for the kept epoch).

    Raises:
        ValueError: ``model`` is not a FineGrainedAD; images not ``(K, 3, H, W)``; a
            malformed ``select_epoch_on_test``.
        FloatingPointError: a non-finite loss.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.clip.mfsc import load_captions, load_vocabularies
        >>> from resad_kit.engine.finegrainedad_protocol import train_on_shots
        >>> from resad_kit.engine.training import TrainConfig
        >>> from resad_kit.methods.finegrainedad import FineGrainedAD, FineGrainedADConfig
        >>> _ = torch.manual_seed(0)
        >>> model = FineGrainedAD(
        ...     ClipBackbone.tiny(image_size=32),
        ...     load_captions("coins"),
        ...     load_vocabularies(),
        ...     FineGrainedADConfig(memory_layers=(1, 3)),
        ... )
        >>> history = train_on_shots(
        ...     model, torch.randn(2, 3, 32, 32), TrainConfig.finegrainedad(epochs=3)
        ... )
        >>> [h["epoch"] for h in history], history[-1]["lr"]["finegrainedad"] < 2e-3
        ([0, 1, 2], True)
    """
    fn = "train_on_shots"
    if not isinstance(model, FineGrainedAD):
        raise ValueError(f"{fn}: `model` must be a FineGrainedAD; got {type(model).__name__}")
    config = TrainConfig.finegrainedad() if config is None else config
    test = None if select_epoch_on_test is None else _check_test_set(fn, select_epoch_on_test)
    if test is not None:
        warnings.warn(TEST_SELECTION_WARNING, UserWarning, stacklevel=2)
    model.fit_references(images)
    optimization = build_optimization(model, config, steps_per_epoch=1)
    active = optimization.active("train")
    with torch.no_grad():
        query = model.encode(images)  # the backbone is frozen: encode the shots once
    masks = images.new_zeros(images.shape[0], *images.shape[-2:])
    trainable = model.trainable_module()
    was_training = trainable.training
    trainable.train()
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    try:
        for epoch in range(config.epochs):
            for optimizer in optimization.optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            losses = model.losses(TrainingBatch(query, None, masks), "train")
            values = {k: float(v.detach()) for k, v in losses.items()}
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(f"{fn}: non-finite loss at epoch {epoch}: {values}")
            losses["total"].backward()
            lrs = dict(step_optimizers(optimization, active, config.grad_clip))
            history.append({"epoch": epoch, **values, "lr": lrs})
            if test is not None:  # the released code's best-on-test epoch (opt-in)
                trainable.eval()
                auroc = _test_pixel_auroc(model, *test)
                trainable.train()
                history[-1]["test_P-AUROC"] = auroc
                if best is None or auroc > best[0]:
                    state = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
                    best = (auroc, epoch, state)
    finally:
        trainable.train(was_training)
    if best is not None:
        trainable.load_state_dict(best[2])
        for entry in history:
            entry["selected"] = entry["epoch"] == best[1]
    return tuple(history)


class FewShotFineGrainedAD(Method):
    """FineGrainedAD of one category as the protocol runs it: trained on each draw of shots.

    Args:
        backbone: the :class:`~resad_kit.clip.image_backbone.ImageBackbone` of the feature
            cache (its model is the one FineGrainedAD reads).
        captions: the category's MFSC (:func:`~resad_kit.clip.mfsc.load_captions`).
        config: :class:`~resad_kit.methods.finegrainedad.FineGrainedADConfig`.
        train_config: :meth:`TrainConfig.finegrainedad` by default; its ``seed`` seeds the
            prompt and Query Former initialisation of every fresh model.
        select_epoch_on_test: ``None`` (default), or the test set's ``(images, masks)``
            for the released code's best-on-test epoch (:func:`train_on_shots`;
            optimistic, warned); the method's :attr:`name` is then
            :data:`TEST_SELECTED_METHOD`, which labels its results.

    :meth:`fit_references` builds a fresh FineGrainedAD (torch seeded with
    ``train_config.seed``) and trains it on the references (:func:`train_on_shots`); the
    loss history is kept in :attr:`history`. ``mode`` is ``"fine_tuned"``.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.clip.image_backbone import ImageBackbone
        >>> from resad_kit.clip.mfsc import load_captions
        >>> from resad_kit.engine.finegrainedad_protocol import FewShotFineGrainedAD
        >>> from resad_kit.engine.training import TrainConfig
        >>> from resad_kit.methods.finegrainedad import FineGrainedADConfig
        >>> backbone = ImageBackbone.wrap(ClipBackbone.tiny(image_size=32))
        >>> method = FewShotFineGrainedAD(
        ...     backbone,
        ...     load_captions("grass"),
        ...     FineGrainedADConfig(memory_layers=(1, 3)),
        ...     TrainConfig.finegrainedad(epochs=2),
        ... )
        >>> method = method.fit_references(backbone(torch.randn(1, 3, 32, 32)))
        >>> method(backbone(torch.randn(2, 3, 32, 32))).anomaly_map.shape, method.mode
        (torch.Size([2, 32, 32]), 'fine_tuned')
    """

    name = "finegrainedad"
    uses_training_references = False

    def __init__(
        self,
        backbone: ImageBackbone,
        captions: CategoryCaptions,
        config: FineGrainedADConfig | None = None,
        train_config: TrainConfig | None = None,
        *,
        select_epoch_on_test: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, ImageBackbone):
            raise ValueError(
                "FewShotFineGrainedAD: `backbone` must be an ImageBackbone (its features are "
                f"the images); got {type(backbone).__name__}"
            )
        if not isinstance(captions, CategoryCaptions):
            raise ValueError("FewShotFineGrainedAD: `captions` must be a CategoryCaptions")
        self.backbone = backbone
        self.captions = captions
        self.config = config or FineGrainedADConfig.official_code()
        self.train_config = train_config or TrainConfig.finegrainedad()
        self.vocabularies = load_vocabularies()
        self.model: FineGrainedAD | None = None
        self.history: tuple[dict[str, Any], ...] = ()
        self.select_epoch_on_test = None
        if select_epoch_on_test is not None:
            fn = "FewShotFineGrainedAD"
            self.select_epoch_on_test = _check_test_set(fn, select_epoch_on_test)
            self.name = TEST_SELECTED_METHOD  # labels the results: optimistic

    @property
    def mode(self) -> str:
        """``"fine_tuned"``: every draw of shots trains the prompts and the Query Former."""
        return "fine_tuned"

    def _images(self, inputs: Tensor | Features) -> Tensor:
        return self.backbone.unpack(inputs) if isinstance(inputs, Features) else inputs

    def fit_references(self, references: Tensor | Features) -> FewShotFineGrainedAD:
        """Build a fresh FineGrainedAD and train it on the ``K`` references."""
        images = self._images(references)
        torch.manual_seed(self.train_config.seed)
        model = FineGrainedAD(self.backbone, self.captions, self.vocabularies, self.config)
        model = model.to(self.backbone.device)
        self.history = train_on_shots(
            model, images, self.train_config, select_epoch_on_test=self.select_epoch_on_test
        )
        self.model = model
        return self

    def forward(
        self,
        inputs: Tensor | Features,
        *,
        output_size: int | tuple[int, int] | None = None,
        return_intermediates: bool = False,
    ) -> Prediction:
        """:meth:`FineGrainedAD.forward` of the model trained on the last references."""
        if self.model is None:
            raise ValueError("FewShotFineGrainedAD: call fit_references(images) before predicting")
        return self.model(
            self._images(inputs), output_size=output_size, return_intermediates=return_intermediates
        )

    def trainable_module(self) -> nn.Module | None:
        """The trained prompts and Query Former of the last references (``None`` before)."""
        return None if self.model is None else self.model.trainable_module()


def evaluate_finegrainedad(
    datasets: Sequence[DatasetSpec],
    cache: FeatureCache,
    *,
    config: FineGrainedADConfig | None = None,
    train_config: TrainConfig | None = None,
    captions: Callable[[str], CategoryCaptions] = load_captions,
    select_epoch_on_test: bool = False,
    **options: Any,
) -> list[CategoryResult]:
    """The few-shot protocol for FineGrainedAD, one category (and its captions) at a time.

    Args:
        datasets: what to evaluate (:class:`~resad_kit.engine.DatasetSpec`).
        cache: a :class:`~resad_kit.engine.FeatureCache` of an
            :class:`~resad_kit.clip.image_backbone.ImageBackbone`.
        config, train_config: of every model (see :class:`FewShotFineGrainedAD`).
        captions: ``category → CategoryCaptions`` (default: the shipped MFSC table,
            :func:`~resad_kit.clip.mfsc.load_captions`; an unknown category is its error).
        select_epoch_on_test: ``False`` (default). ``True``: every model keeps the epoch of
            the best pixel AUROC on its category's test split (read as the protocol reads
            it: ``eval_size``, ``mask_interpolation``), as the released code: model
            selection on the test set, optimistic. Emits a ``UserWarning``; the results'
            method is :data:`TEST_SELECTED_METHOD`.
        options: passed to :func:`~resad_kit.engine.run_evaluation` (``shots``, ``seeds``,
            ``eval_size``, ``heatmap_dir``, …).

    Returns:
        The :class:`~resad_kit.engine.results.CategoryResult` list (method
        ``"finegrainedad"``, or :data:`TEST_SELECTED_METHOD` with ``select_epoch_on_test``;
        mode ``"fine_tuned"``) in data set, category, shots, seed order.

    Raises:
        ValueError: a cache of another backbone than an ImageBackbone, an unknown category.

    Example:
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.clip.image_backbone import ImageBackbone
        >>> from resad_kit.data import synthesize_dataset
        >>> from resad_kit.engine import DatasetSpec, FeatureCache
        >>> from resad_kit.engine.finegrainedad_protocol import evaluate_finegrainedad
        >>> from resad_kit.engine.training import TrainConfig
        >>> from resad_kit.methods.finegrainedad import FineGrainedADConfig
        >>> root = synthesize_dataset(getfixture("tmp_path"), ["grass"], 2, 4, image_size=32)
        >>> cache = FeatureCache(ImageBackbone.wrap(ClipBackbone.tiny(image_size=32)))
        >>> results = evaluate_finegrainedad(
        ...     [DatasetSpec("synthetic", root, ["grass"])],
        ...     cache,
        ...     config=FineGrainedADConfig(memory_layers=(1, 3)),
        ...     train_config=TrainConfig.finegrainedad(epochs=1),
        ...     shots=(1,),
        ...     seeds=(0,),
        ...     progress=False,
        ... )
        >>> [(r.category, r.shots, r.method, r.mode) for r in results]
        [('grass', 1, 'finegrainedad', 'fine_tuned')]
    """
    backbone = cache.backbone
    if not isinstance(backbone, ImageBackbone):
        raise ValueError(
            "evaluate_finegrainedad: `cache` must encode with an ImageBackbone "
            f"(ImageBackbone.wrap(backbone)); got {type(backbone).__name__}"
        )
    if select_epoch_on_test:
        warnings.warn(TEST_SELECTION_WARNING, UserWarning, stacklevel=2)
    results: list[CategoryResult] = []
    for spec in datasets:
        for category in spec.categories:
            test = None
            if select_epoch_on_test:
                split = AnomalyDataset(
                    spec.root, category, "test", backbone.image_size,
                    mask_size=options.get("eval_size"),
                    mask_interpolation=options.get("mask_interpolation", "nearest"),
                    mean=backbone.mean, std=backbone.std,
                )  # fmt: skip
                index = range(len(split))
                test = (split.images(index).to(backbone.device), split.masks(index))
            method = FewShotFineGrainedAD(
                backbone, captions(category), config, train_config, select_epoch_on_test=test
            )
            unit = DatasetSpec(spec.name, spec.root, (category,))
            results.extend(
                run_evaluation({("fine_tuned", spec.name): method}, [unit], cache, **options)
            )
    return results
