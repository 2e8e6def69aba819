"""The interface every anomaly-detection method of resad_kit implements.

A :class:`Method` is an ``nn.Module`` over a frozen :class:`~resad_kit.clip.ClipBackbone`
that the engine (``resad_kit.engine``: training, checkpoints, evaluation protocol, result
tables, heat maps) can run without knowing which method it is:

- :meth:`Method.fit_references` takes the ``K`` normal reference images of a few-shot
  setting (images or their backbone :class:`~resad_kit.clip.Features`) and returns
  ``self``; a method that can also run without references (zero-shot, e.g. AF-CLIP) sets
  :attr:`Method.supports_zero_shot` and implements :meth:`Method.clear_references`;
- ``forward(inputs, output_size=..., return_intermediates=...)`` returns a
  :class:`Prediction`: the fused map and score, named branch outputs and, on request, the
  method's intermediate tensors (per-layer maps, retrieval weights, …);
- training (optional): :attr:`Method.phases` is the alternation of epochs (epoch ``e``
  trains phase ``phases[e % len(phases)]``), :meth:`Method.optimizer_groups` declares one
  optimiser per group with its learning rates and the phases in which it steps,
  :meth:`Method.losses` gives the loss terms of one batch in one phase (key ``"total"`` is
  what is minimised), and :meth:`Method.trainable_module` is what a checkpoint stores; a
  method whose losses need no 1-shot reference per query sets
  :attr:`Method.uses_training_references` to ``False`` (its batches carry
  ``reference=None``);
- :attr:`Method.name` and :attr:`Method.config` (a dataclass with ``to_dict`` /
  ``from_dict``) identify a model in checkpoints and result tables.

A training-free method leaves :attr:`Method.phases` empty and inherits the defaults.

Shape legend: ``B`` query images, ``K`` shots, ``H×W`` output pixels.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from resad_kit.clip import ClipBackbone, Features

__all__ = ["BranchOutput", "Method", "OptimizerGroup", "Prediction", "TrainingBatch"]


class BranchOutput(NamedTuple):
    """One branch's anomaly map and image score.

    Attributes:
        map: ``(B, H, W)`` anomaly map of the branch.
        score: ``(B,)`` image score of the branch.

    Example:
        >>> import torch
        >>> from resad_kit.methods import BranchOutput
        >>> out = BranchOutput(map=torch.zeros(2, 8, 8), score=torch.zeros(2))
        >>> out.map.shape, out.score.shape
        (torch.Size([2, 8, 8]), torch.Size([2]))
    """

    map: Tensor
    score: Tensor


class Prediction(NamedTuple):
    """What ``Method.forward`` returns (float32).

    Attributes:
        image_score: ``(B,)`` fused image score.
        anomaly_map: ``(B, H, W)`` fused pixel map.
        branches: branch name → :class:`BranchOutput` (empty for a single-branch method).
        intermediates: with ``return_intermediates=True``, the method's named inner tensors
            (each method documents its keys, e.g. ``Res2CLIP.forward``: per-layer maps,
            retrieval weights, matched references, residuals, directions, global terms);
            otherwise ``None``.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.methods import Res2CLIP
        >>> model = Res2CLIP(ClipBackbone.tiny()).fit_references(torch.randn(1, 3, 64, 64))
        >>> prediction = model(torch.randn(2, 3, 64, 64))
        >>> prediction.anomaly_map.shape, prediction.branches["visual"].score.shape
        (torch.Size([2, 64, 64]), torch.Size([2]))
    """

    image_score: Tensor
    anomaly_map: Tensor
    branches: dict[str, BranchOutput]
    intermediates: Mapping[str, Any] | None = None


class TrainingBatch(NamedTuple):
    """One training batch: queries, their 1-shot references (if any) and the masks.

    Attributes:
        query: :class:`~resad_kit.clip.Features` of ``B`` query images.
        reference: :class:`~resad_kit.clip.Features` of ``B`` normal images; reference
            ``b`` is the 1-shot reference of query ``b``. ``None`` for a method with
            ``uses_training_references = False`` (e.g. AF-CLIP).
        masks: ``(B, H, W)`` binary ground truth (1 = anomalous); the image label is
            the mask's maximum.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.methods import TrainingBatch
        >>> backbone = ClipBackbone.tiny()
        >>> images = torch.randn(4, 3, 64, 64)
        >>> batch = TrainingBatch(
        ...     backbone(images[:2]), backbone(images[2:]), torch.zeros(2, 64, 64)
        ... )
        >>> batch.query.cls.shape, batch.masks.shape
        (torch.Size([2, 32]), torch.Size([2, 64, 64]))
    """

    query: Features
    reference: Features | None
    masks: Tensor


@dataclasses.dataclass(frozen=True)
class OptimizerGroup:
    """One optimiser a method asks the engine to build.

    Attributes:
        name: the optimiser's name (checkpoints and logs use it).
        params: ``(modules, learning rate)`` pairs: one optimiser parameter group each.
        phases: the phases in which this optimiser steps (a subset of ``Method.phases``).

    Example:
        >>> from torch import nn
        >>> from resad_kit.methods import OptimizerGroup
        >>> group = OptimizerGroup("head", ((nn.Linear(2, 2), 1e-3),), ("train",))
        >>> group.name, group.params[0][1], group.phases
        ('head', 0.001, ('train',))
    """

    name: str
    params: tuple[tuple[nn.Module, float], ...]
    phases: tuple[str, ...]


class Method(nn.Module, abc.ABC):
    """Base class of the anomaly-detection methods the engine runs (see the module docs).

    Subclasses set :attr:`name`, keep ``backbone`` and ``config`` as attributes, and
    implement :meth:`fit_references` and ``forward``; trainable methods also set
    :attr:`phases` and override :meth:`optimizer_groups`, :meth:`losses` and
    :meth:`trainable_module`.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.methods import Method, Res2CLIP, Res2CLIPConfig
        >>> model = Res2CLIP(ClipBackbone.tiny(), Res2CLIPConfig.paper("fine_tuned"))
        >>> isinstance(model, Method), model.name, model.phases, model.mode
        (True, 'res2clip', ('visual', 'text'), 'fine_tuned')
        >>> [(g.name, g.phases) for g in model.optimizer_groups()][:2]
        [('visual', ('visual', 'text')), ('residual_visual', ('visual',))]
    """

    #: Short identifier recorded in checkpoints and result tables (e.g. ``"res2clip"``).
    name: ClassVar[str] = ""
    #: Whether the method predicts without references (0 shots): the protocol then calls
    #: :meth:`clear_references` instead of :meth:`fit_references`.
    supports_zero_shot: ClassVar[bool] = False
    #: Whether :meth:`losses` needs a 1-shot normal reference per training query
    #: (``TrainingBatch.reference``); ``False``: the engine draws none and passes ``None``.
    uses_training_references: ClassVar[bool] = True
    backbone: ClipBackbone
    config: Any

    @property
    def phases(self) -> tuple[str, ...]:
        """The alternation of training epochs; ``()`` for a training-free model."""
        return ()

    @property
    def trainable(self) -> bool:
        """Whether the engine can train this model (it declares phases)."""
        return bool(self.phases)

    @property
    def mode(self) -> str:
        """The label of this model in result tables (e.g. ``"training_free"``)."""
        return "fine_tuned" if self.trainable else "training_free"

    @abc.abstractmethod
    def fit_references(self, references: Tensor | Features) -> Method:
        """Store what the method needs of ``K ≥ 1`` normal references; returns ``self``."""

    def clear_references(self) -> Method:
        """Forget the fitted references (zero-shot prediction); returns ``self``.

        Raises:
            ValueError: for a method without a zero-shot mode (the default).
        """
        raise ValueError(
            f"{type(self).__name__}: the {self.name!r} method needs K >= 1 references; it has "
            "no zero-shot mode (shots=0)"
        )

    def optimizer_groups(self) -> list[OptimizerGroup]:
        """The optimisers to build (empty for a training-free model)."""
        return []

    def losses(self, batch: TrainingBatch, phase: str) -> dict[str, Tensor]:
        """Loss terms of one batch in one phase; ``"total"`` is minimised."""
        raise ValueError(f"{type(self).__name__}.losses: this model has nothing to train")

    def trainable_module(self) -> nn.Module | None:
        """The module whose ``state_dict`` a checkpoint stores (``None``: nothing)."""
        return None

    def config_dict(self) -> dict[str, Any]:
        """``config.to_dict()``: what a checkpoint records to identify the model."""
        to_dict = getattr(self.config, "to_dict", None)
        if to_dict is None:
            raise TypeError(f"{type(self).__name__}: `config` must have a to_dict() method")
        return to_dict()
