"""Reading the released AF-CLIP weights (official code Faustinaqq/AF-CLIP, ``weight/``).

The official repository ships ``weight/{mvtec,visa}_adaptor.pt`` and
``weight/{mvtec,visa}_prompt.pt`` (``mvtec``: trained on MVTec AD, evaluate every other
data set; ``visa``: trained on VisA, evaluate MVTec AD). The prompt file is one
``nn.Parameter`` ``(1, 12, 768)`` and reads with ``weights_only=True``. The adaptor file is
the whole pickled ``Adaptor`` module (the official code does ``torch.save(model.adaptor)``),
whose unpickling would import and run the official package. :func:`read_official_adaptor`
reads it **without** that package and without running foreign code: a restricted
unpickler rebuilds only tensors, parameters and ordered dicts and replaces every other
class by an inert record of its attributes, from which the ``state_dict`` (the
``_parameters`` and ``_buffers`` of the module tree) is collected. A file that is
already a state dict reads with ``weights_only=True``.
"""

from __future__ import annotations

import collections
import os
import pickle
import types
from typing import Any

import torch
from torch import Tensor

from resad_kit.methods import AFCLIP

__all__ = ["load_afclip_weights", "official_weight_files", "read_official_adaptor"]

# The only callables the restricted unpickler resolves (tensor storage is torch.load's own).
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("torch", "Size"),
}

_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _Record:
    """An inert stand-in for any other pickled class: it only keeps its attributes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple):  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state if isinstance(state, dict) else {})


def _record_class(module: str, name: str) -> type:
    return type(name, (_Record,), {"__module__": f"resad_kit.unpickled.{module}"})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)  # protocol 2 writes Python 2 names
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "copyreg" and name == "__newobj__":
            return _newobj
        if module == "torch" and name.endswith("Storage"):
            return super().find_class(module, name)  # storage types, resolved by torch.load
        return _record_class(module, name)


def _newobj(cls: type, *args: Any) -> Any:
    if not issubclass(cls, _Record):
        raise pickle.UnpicklingError(f"refusing to build {cls!r}")
    return cls.__new__(cls)


_restricted_pickle = types.SimpleNamespace(
    Unpickler=_Unpickler, load=pickle.load, __name__="resad_kit_restricted_pickle"
)


def _state_dict(record: Any, prefix: str = "") -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    attrs = getattr(record, "__dict__", {})
    transient = attrs.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (attrs.get(group) or {}).items():
            if isinstance(value, Tensor) and name not in transient:
                out[prefix + name] = value.detach()
    for name, child in (attrs.get("_modules") or {}).items():
        if child is not None:
            out |= _state_dict(child, f"{prefix}{name}.")
    return out


def read_official_adaptor(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict of an official ``*_adaptor.pt`` file, without the official package.

    Args:
        path: the released pickled ``Adaptor`` module, or a state dict saved from it.

    Returns:
        ``{key: tensor}`` in the official key layout (``attention.norm.weight``, …), on CPU;
        :meth:`AFCLIP.load_official <resad_kit.methods.AFCLIP.load_official>` converts it.

    Raises:
        ValueError: the file holds neither a module nor a state dict of tensors.

    Example:
        >>> import torch
        >>> from resad_kit.engine.checkpoint_afclip import read_official_adaptor
        >>> path = getfixture("tmp_path") / "adaptor.pt"
        >>> torch.save({"attention.norm.weight": torch.ones(4)}, path)
        >>> read_official_adaptor(path)
        {'attention.norm.weight': tensor([1., 1., 1., 1.])}
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a pickled module: rebuild it inertly
        loaded = _state_dict(
            torch.load(
                path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle
            )
        )
    if isinstance(loaded, torch.nn.Module):
        loaded = loaded.state_dict()
    if not (
        isinstance(loaded, dict)
        and loaded
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items())
    ):
        raise ValueError(
            f"read_official_adaptor: {str(path)!r} holds neither the official Adaptor module "
            "nor a state dict of tensors"
        )
    return dict(collections.OrderedDict(loaded))


def official_weight_files(weight_dir: str | os.PathLike[str], trained_on: str) -> tuple[str, str]:
    """``(adaptor, prompt)`` paths of the released weights trained on ``"mvtec"`` or ``"visa"``.

    Example:
        >>> from resad_kit.engine.checkpoint_afclip import official_weight_files
        >>> official_weight_files("AF-CLIP/weight", "visa")
        ('AF-CLIP/weight/visa_adaptor.pt', 'AF-CLIP/weight/visa_prompt.pt')
    """
    if trained_on not in ("mvtec", "visa"):
        raise ValueError(
            f"official_weight_files: `trained_on` must be 'mvtec' or 'visa'; got {trained_on!r}"
        )
    root = os.fspath(weight_dir)
    return tuple(os.path.join(root, f"{trained_on}_{part}.pt") for part in ("adaptor", "prompt"))


def load_afclip_weights(
    model: AFCLIP, adaptor: str | os.PathLike[str], prompt: str | os.PathLike[str]
) -> AFCLIP:
    """Load the two released files into ``model`` (see the module docs); returns it.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.engine.checkpoint_afclip import load_afclip_weights
        >>> from resad_kit.methods import AFCLIP
        >>> backbone = ClipBackbone.tiny(vv_blocks=0, tap_output="residual", tap_cls=True)
        >>> model = AFCLIP(backbone)
        >>> path = getfixture("tmp_path") / "prompt.pt"
        >>> torch.save(torch.nn.Parameter(torch.zeros(1, 12, 64)), path)
        >>> official = {
        ...     "attention." + ("attn." + k if k.startswith("to_") else k): v
        ...     for k, v in model.adapter.state_dict().items()
        ... }
        >>> official = {k.replace("to_out.", "to_out.0."): v for k, v in official.items()}
        >>> torch.save(official, path.with_name("adaptor.pt"))
        >>> load_afclip_weights(model, path.with_name("adaptor.pt"), path).prompts.ctx.abs().max()
        tensor(0., grad_fn=<MaxBackward1>)
    """
    if not isinstance(model, AFCLIP):
        raise TypeError(f"load_afclip_weights: `model` must be an AFCLIP; got {type(model)}")
    ctx = torch.load(prompt, map_location="cpu", weights_only=True)
    return model.load_official(read_official_adaptor(adaptor), ctx)
