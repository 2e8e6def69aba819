"""The allow-listed unpickler of a TorchScript archive's ``data.pkl`` (no code runs).

Part of :mod:`resad_kit.clip.torchscript`: :class:`ArchiveUnpickler` rebuilds the
module tree of ``data.pkl`` with an allow-list (``collections.OrderedDict``,
``_rebuild_tensor_v2``, the storage types, the list builders of ``torch.jit._pickle``),
each ``__torch__.*`` class becoming an inert :class:`ScriptObject` record of its state;
any other global is refused with :class:`ArchiveError`. Storages are read from the zip
into flat tensors of their dtype.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ArchiveError", "ArchiveUnpickler", "ScriptObject"]

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}  # fmt: skip
_QUALIFIED_NAME = re.compile(r"__torch__(\.[A-Za-z_][A-Za-z0-9_]*)*")
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]+")


class ArchiveError(ValueError):
    """The archive cannot be read as weights alone (the message says why)."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    """What the pickle's ``torch.FloatStorage`` (etc.) global stands for: a dtype."""

    dtype: torch.dtype


@dataclass(frozen=True, slots=True)
class _Storage:
    """One storage of the archive as a flat tensor of its dtype."""

    flat: torch.Tensor


class ScriptObject:
    """An object of a ``__torch__.*`` class of the archive: its name and pickled state only.

    Nothing of the class is imported or run; ``__setstate__`` only records the state.
    """

    qualified_name = "__torch__"

    def __setstate__(self, state: object) -> None:
        self.__dict__["state"] = state


def _rebuild_tensor(
    storage: object, offset: object, size: object, stride: object, *ignored: object
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` with its arguments checked; ``requires_grad``,
    hooks and metadata are ignored (a state dict holds none of them)."""
    if not isinstance(storage, _Storage):
        raise ArchiveError(f"a tensor is built over {type(storage).__name__}, not a storage")
    if not _is_int_tuple((offset,)) or not _is_int_tuple(size) or not _is_int_tuple(stride):
        raise ArchiveError(f"a tensor has invalid offset/size/stride {offset}/{size}/{stride}")
    if len(size) != len(stride):  # type: ignore[arg-type]
        raise ArchiveError(f"a tensor has size {size} but stride {stride}")
    flat = storage.flat
    try:
        return torch.empty(0, dtype=flat.dtype).set_(flat.untyped_storage(), offset, size, stride)
    except RuntimeError as err:
        raise ArchiveError(f"a tensor does not fit its storage: {err}") from None


def _is_int_tuple(values: object) -> bool:
    return isinstance(values, tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    )


def _list_of(kind: type | tuple[type, ...]) -> Any:
    def build(values: object) -> list[Any]:
        if not isinstance(values, list) or not all(isinstance(v, kind) for v in values):
            raise ArchiveError(f"a typed list holds something else: {type(values).__name__}")
        return values

    return build


def _restore_type_tag(value: object, type_str: object) -> object:
    return value


def _device(name: object) -> torch.device:
    if not isinstance(name, str):
        raise ArchiveError(f"a device is named by {type(name).__name__}, not str")
    return torch.device(name)


class _Builder:
    """An allow-listed callable as data.pkl sees it: immutable (no BUILD can alter it)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value: object) -> None:
        raise ArchiveError("data.pkl tries to modify one of the functions it may call")

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


_ALLOWED: dict[tuple[str, str], _Builder] = {
    ("collections", "OrderedDict"): _Builder(collections.OrderedDict),
    ("torch._utils", "_rebuild_tensor_v2"): _Builder(_rebuild_tensor),
    ("torch.jit._pickle", "build_intlist"): _Builder(_list_of(int)),
    ("torch.jit._pickle", "build_doublelist"): _Builder(_list_of(float)),
    ("torch.jit._pickle", "build_boollist"): _Builder(_list_of(bool)),
    ("torch.jit._pickle", "build_tensorlist"): _Builder(_list_of(torch.Tensor)),
    ("torch.jit._pickle", "restore_type_tag"): _Builder(_restore_type_tag),
    ("torch", "device"): _Builder(_device),
}


class ArchiveUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` with the allow-list above; storages come from the zip."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix = archive, prefix
        self._classes: dict[str, type[ScriptObject]] = {}
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if _QUALIFIED_NAME.fullmatch(qualified):
            if qualified not in self._classes:
                self._classes[qualified] = type(
                    name, (ScriptObject,), {"qualified_name": qualified}
                )
            return self._classes[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise ArchiveError(
            f"its data.pkl refers to {qualified!r}, which a file of weights never needs; "
            "refusing to load it (nothing was run)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and _STORAGE_KEY.fullmatch(pid[2])
            and isinstance(pid[4], int)
            and pid[4] >= 0
        ):
            raise ArchiveError(f"invalid storage reference in data.pkl: {pid!r}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if key in self._storages:
            storage = self._storages[key]
            if storage.flat.dtype != kind.dtype or storage.flat.numel() != numel:
                raise ArchiveError(f"storage {key!r} is referenced with two different types")
            return storage
        storage = _Storage(self._read_storage(f"{self._prefix}data/{key}", kind.dtype, numel))
        self._storages[key] = storage
        return storage

    def _read_storage(self, member: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        try:
            info = self._archive.getinfo(member)
        except KeyError:
            raise ArchiveError(f"the archive lacks the storage {member!r}") from None
        itemsize = torch.empty(0, dtype=dtype).element_size()
        nbytes = numel * itemsize
        if info.file_size != nbytes:
            raise ArchiveError(
                f"storage {member!r} holds {info.file_size} bytes; data.pkl expects "
                f"{numel} × {itemsize} = {nbytes}"
            )
        flat = torch.empty(numel, dtype=dtype)
        view = memoryview(flat.view(torch.uint8).numpy())
        with self._archive.open(info) as stream:  # reads until full or the end
            if nbytes and stream.readinto(view) != nbytes:
                raise ArchiveError(f"storage {member!r} ends early")
        return flat
