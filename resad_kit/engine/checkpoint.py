"""Training checkpoints of any trainable method in one safetensors file.

The Res²CLIP paper saves a checkpoint after epoch 10; here one is written after every epoch.

One ``.safetensors`` file holds everything needed to evaluate or to resume:

- the trained weights: ``model.trainable_module().state_dict()`` (Res²CLIP's adapters,
  a trainable :class:`~resad_kit.methods.NearestNeighbor`'s projection), keys
  ``module.<name>``;
- every optimiser's and scheduler's ``state_dict``, its tensors stored as tensors
  (``optimizers.<name>.…``) and the rest in the JSON metadata;
- JSON metadata: the method's name (``Method.name``) and configuration
  (``Method.config_dict()``), the backbone it was trained on (name, weights label, ``D``,
  taps), the training configuration, the number of completed epochs, the global step, the
  random-number-generator states, a record of the training data
  (:func:`~resad_kit.engine.fingerprint.data_fingerprint`) and any extra JSON-able data
  (the loss history);
- a SHA-256 checksum (metadata key ``sha256``) of the JSON metadata and of every tensor's
  name, dtype, shape and bytes, verified by :func:`load_checkpoint`: a file whose bytes
  were altered after it was written (a flipped bit on disk, a bad copy) is refused with a
  ``ValueError`` naming it. Files written before checksums existed load with a warning.

Writes are atomic (:func:`~resad_kit.engine.atomic.atomic_write`: temporary file next to
the destination, fsync, ``os.replace``), so an interrupted save never leaves a truncated
checkpoint. Loading into a
model checks that it is the same method (``"checkpoint of method 'x', model is 'y'"``
otherwise) with the same configuration and backbone, and, when asked, that the training
configuration and data match, and raises a ``ValueError`` naming every field that differs.
Files of the first format (Res²CLIP only: ``adapters.<name>`` keys, no method name) are
still read, as Res²CLIP checkpoints.

Only tensors, ``str``, ``int``, ``float``, ``bool``, ``None`` and lists, tuples and dicts
of them can be stored; tuples and dicts with non-string keys (an optimiser's ``state``)
come back as they went in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from resad_kit.engine._checkpoint_checks import (
    backbone_info,
    check_data,
    check_model,
    trainable_module,
)
from resad_kit.engine._checkpoint_codec import as_dict, checksum, decode, differences, encode
from resad_kit.engine.atomic import atomic_write
from resad_kit.methods import Method

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

logger = logging.getLogger(__name__)

FORMAT = "resad_kit.checkpoint"
VERSION = 2
# The first format: Res2CLIP only, weights under "adapters.", no method name.
_LEGACY = ("resad_kit.res2clip.checkpoint", "1", "res2clip", "adapters.")
_PREFIX = "module."
_META_KEY = "resad_kit"
_CHECKSUM_KEY = "sha256"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` read from a file.

    Attributes:
        path: the file.
        method: ``Method.name`` of the saved model (e.g. ``"res2clip"``).
        state: the ``state_dict`` of the model's trainable module (CPU tensors or
            ``map_location``); also available as :attr:`adapters`.
        model_config: ``config.to_dict()`` of the saved model; rebuild it with the
            config's ``from_dict`` (e.g. ``Res2CLIPConfig.from_dict``).
        backbone: ``model_name``, ``weights``, ``embed_dim``, ``layers``, ``image_size``
            and ``patch_size`` of the backbone the weights were trained on.
        train_config: the training configuration as a dict (``None`` if not saved).
        epoch: completed epochs.
        global_step: completed training steps.
        optimizers: ``{name: optimizer.state_dict()}``.
        schedulers: ``{name: scheduler.state_dict()}``.
        rng: random-number-generator states (see :func:`save_checkpoint`).
        extra: any extra JSON-able data saved with the checkpoint.
        data: the record of the training data
            (:func:`~resad_kit.engine.fingerprint.data_fingerprint`); ``None`` if not saved.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.methods import Res2CLIP, Res2CLIPConfig
        >>> from resad_kit.engine.checkpoint import load_checkpoint, save_checkpoint
        >>> model = Res2CLIP(ClipBackbone.tiny(), Res2CLIPConfig.paper(mode="fine_tuned"))
        >>> adam = torch.optim.Adam(model.adapters.parameters(), betas=(0.5, 0.999))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_checkpoint(
        ...         Path(tmp) / "c.safetensors", model, optimizers={"all": adam}, epoch=1
        ...     )
        ...     ckpt = load_checkpoint(path)
        >>> ckpt.method, ckpt.model_config["mode"], list(ckpt.optimizers), ckpt.epoch
        ('res2clip', 'fine_tuned', ['all'], 1)
        >>> ckpt.optimizers["all"]["param_groups"][0]["betas"]
        (0.5, 0.999)
    """

    path: Path
    method: str
    state: dict[str, Tensor]
    model_config: dict[str, Any]
    backbone: dict[str, Any]
    train_config: dict[str, Any] | None
    epoch: int
    global_step: int
    optimizers: dict[str, dict[str, Any]]
    schedulers: dict[str, dict[str, Any]]
    rng: dict[str, Any]
    extra: dict[str, Any]
    data: dict[str, Any] | None = None

    @property
    def adapters(self) -> dict[str, Tensor]:
        """:attr:`state` under its Res²CLIP name (the adapters' ``state_dict``)."""
        return self.state


# ---------------------------------------------------------------------------- save


def save_checkpoint(
    path: str | Path,
    model: Method,
    *,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    train_config: Any = None,
    epoch: int = 0,
    global_step: int = 0,
    rng: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> Path:
    """Write the trained weights, optimiser/scheduler states and metadata to one file.

    Args:
        path: destination (``.safetensors``); parent folders are created. Written
            atomically (:func:`~resad_kit.engine.atomic.atomic_write`).
        model: a trainable :class:`~resad_kit.methods.Method` (its ``trainable_module()``
            is stored, with its ``name`` and ``config_dict()``), e.g. a fine-tuned
            ``Res2CLIP``.
        optimizers: ``{name: optimizer}``; their ``state_dict()`` is stored.
        schedulers: ``{name: LR scheduler}``; their ``state_dict()`` is stored.
        train_config: the training configuration (a dataclass or a mapping).
        epoch: completed epochs.
        global_step: completed steps.
        rng: random-number-generator states, e.g. ``{"reference": random.Random().getstate(),
            "torch_cpu": torch.get_rng_state()}``.
        extra: further JSON-able data (lists, dicts, numbers, strings).
        data: the record of the training data
            (:func:`~resad_kit.engine.fingerprint.data_fingerprint`), which
            ``load_checkpoint(..., data=...)`` compares.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: a training-free model (``trainable_module()`` is ``None``).
        TypeError: a model that is not a ``Method``, or something that cannot be stored
            (see the module docstring).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.methods import Res2CLIP, Res2CLIPConfig
        >>> from resad_kit.engine.checkpoint import load_checkpoint, save_checkpoint
        >>> model = Res2CLIP(ClipBackbone.tiny(), Res2CLIPConfig.paper(mode="fine_tuned"))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_checkpoint(Path(tmp) / "ckpt.safetensors", model, epoch=3)
        ...     ckpt = load_checkpoint(path, model)  # checks the config, loads the adapters
        >>> ckpt.epoch, ckpt.backbone["embed_dim"], len(ckpt.adapters) > 0
        (3, 32, True)
    """
    fn = "save_checkpoint"
    module = trainable_module(fn, model)
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    for key, value in module.state_dict().items():
        tensors[f"{_PREFIX}{key}"] = value.detach().to("cpu", copy=True).contiguous()
    payload = {
        "method": model.name,
        "model_config": model.config_dict(),
        "backbone": backbone_info(model),
        "train_config": as_dict(train_config, "train_config"),
        "epoch": int(epoch),
        "global_step": int(global_step),
        "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
        "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
        "rng": dict(rng or {}),
        "extra": dict(extra or {}),
        "data": None if data is None else dict(data),
    }
    encoded = json.dumps({key: encode(value, key, tensors) for key, value in payload.items()})
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        _META_KEY: encoded,
        _CHECKSUM_KEY: checksum(encoded, tensors),
    }

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, safetensors_bytes(tensors, metadata=metadata))


# ---------------------------------------------------------------------------- load


def _read(path: Path, device: str | torch.device) -> Checkpoint:
    fn = "load_checkpoint"
    if not path.is_file():
        raise ValueError(f"{fn}: no checkpoint file at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{fn}: {str(path)!r} is not a readable safetensors file: {err}") from err
    legacy = metadata.get("format") == _LEGACY[0]
    if not (legacy or metadata.get("format") == FORMAT) or _META_KEY not in metadata:
        raise ValueError(
            f"{fn}: {str(path)!r} is not a resad_kit checkpoint "
            f"(metadata format {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    if metadata.get("version") != (_LEGACY[1] if legacy else str(VERSION)):
        raise ValueError(
            f"{fn}: {str(path)!r} has checkpoint version {metadata.get('version')!r}; "
            f"this resad_kit reads version {VERSION}"
        )
    _verify(path, metadata, tensors)
    if torch.device(device) != torch.device("cpu"):
        tensors = {key: t.to(device) for key, t in tensors.items()}
    payload = decode(json.loads(metadata[_META_KEY]), tensors)
    prefix = _LEGACY[3] if legacy else _PREFIX
    return Checkpoint(
        path=path,
        method=_LEGACY[2] if legacy else payload["method"],
        state={k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)},
        model_config=payload["model_config"],
        backbone=payload["backbone"],
        train_config=payload["train_config"],
        epoch=payload["epoch"],
        global_step=payload["global_step"],
        optimizers=payload["optimizers"],
        schedulers=payload["schedulers"],
        rng=payload["rng"],
        extra=payload["extra"],
        data=payload.get("data"),  # absent in files written before data records existed
    )


def _verify(path: Path, metadata: Mapping[str, str], tensors: Mapping[str, Tensor]) -> None:
    """Compare the stored checksum with the file's content; warn if there is none."""
    stored = metadata.get(_CHECKSUM_KEY)
    if stored is None:
        logger.warning(
            "load_checkpoint: %s has no checksum (written by an older resad_kit), so its "
            "tensors cannot be verified; save it again to add one",
            path,
        )
        return
    actual = checksum(metadata[_META_KEY], tensors)
    if actual != stored:
        raise ValueError(
            f"load_checkpoint: {str(path)!r} is corrupt: the SHA-256 of its tensors and "
            f"metadata is {actual[:12]}… but {stored[:12]}… was stored when it was written "
            "(altered on disk or in a copy); restore the file from a good copy or retrain"
        )


def _load_states(fn: str, what: str, saved: Mapping[str, Any], targets: Mapping[str, Any]) -> None:
    if set(saved) != set(targets):
        raise ValueError(
            f"{fn}: `{what}` must have the names stored in the checkpoint, {sorted(saved)}; "
            f"got {sorted(targets)}"
        )
    for name, target in targets.items():
        target.load_state_dict(saved[name])


def load_checkpoint(
    path: str | Path,
    model: Method | None = None,
    *,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    train_config: Any = None,
    data: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; optionally restore it in place.

    Every given target is checked before anything is loaded, so on an error nothing has
    changed.

    Args:
        path: the ``.safetensors`` file.
        model: if given, it must be the checkpoint's method (``model.name``), and its
            config (``config_dict()``) and backbone (name, ``D``, taps, patch size) must
            match the checkpoint's (a different weights label only logs a warning); then
            its trainable module's state is loaded (strict).
        optimizers: if given, the same names as stored; each gets its state.
        schedulers: if given, the same names as stored; each gets its state.
        train_config: if given (dataclass or mapping), it must equal the stored training
            configuration (resuming with other settings would silently change the run).
        data: if given (a :func:`~resad_kit.engine.fingerprint.data_fingerprint` record),
            it must equal the stored record of the training data (roots aside); a
            checkpoint without one (written by an older resad_kit) only logs a warning.
        map_location: where the tensors of the returned :class:`Checkpoint` are placed.

    Returns:
        The :class:`Checkpoint`.

    Raises:
        ValueError: missing or unreadable file, not a resad_kit checkpoint, a corrupt
            file (its checksum does not match), a training-free model, a checkpoint of
            another method (``"checkpoint of method 'x', model is 'y'"``), or a
            config/backbone/data/name mismatch (the message lists every difference).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.methods import Res2CLIP, Res2CLIPConfig
        >>> from resad_kit.engine.checkpoint import load_checkpoint, save_checkpoint
        >>> trained = Res2CLIP(ClipBackbone.tiny(), Res2CLIPConfig.paper(mode="fine_tuned"))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_checkpoint(Path(tmp) / "ckpt.safetensors", trained)
        ...     config = Res2CLIPConfig.from_dict(load_checkpoint(path).model_config)
        ...     model = Res2CLIP(ClipBackbone.tiny(), config)
        ...     _ = load_checkpoint(path, model)
        ...     other = Res2CLIP(
        ...         ClipBackbone.tiny(), Res2CLIPConfig.official_code(mode="fine_tuned")
        ...     )
        ...     load_checkpoint(path, other)
        Traceback (most recent call last):
        ...
        ValueError: load_checkpoint: the model's Res2CLIPConfig differs from the checkpoint's ...
    """
    fn = "load_checkpoint"
    ckpt = _read(Path(path), map_location)
    if model is not None:
        module = trainable_module(fn, model)
        check_model(ckpt.path, ckpt.method, ckpt.model_config, ckpt.backbone, model)
    if train_config is not None:
        diffs = differences(ckpt.train_config or {}, as_dict(train_config, "train_config"))
        if diffs:
            raise ValueError(
                f"{fn}: the training configuration differs from the checkpoint's "
                f"({str(ckpt.path)!r}): " + "; ".join(diffs)
            )
    if data is not None:
        check_data(ckpt.path, ckpt.data, data)
    if optimizers is not None and set(optimizers) != set(ckpt.optimizers):
        _load_states(fn, "optimizers", ckpt.optimizers, optimizers)  # raises
    if schedulers is not None and set(schedulers) != set(ckpt.schedulers):
        _load_states(fn, "schedulers", ckpt.schedulers, schedulers)  # raises
    if model is not None:
        module.load_state_dict(ckpt.state, strict=True)
    if optimizers is not None:
        _load_states(fn, "optimizers", ckpt.optimizers, optimizers)
    if schedulers is not None:
        _load_states(fn, "schedulers", ckpt.schedulers, schedulers)
    return ckpt
