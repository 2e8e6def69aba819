"""The weights of a TorchScript archive (OpenAI's CLIP ``.pt``), read without running its code.

``torch.jit.load`` compiles the archive's ``code/`` folder and runs it while it
loads (a TorchScript ``__setstate__`` executes before anything checks the file).
Weights need none of that. A TorchScript archive is a zip of

- ``<name>/data.pkl``: a pickle of the module tree; each module is an object of a
  ``__torch__.*`` class whose state is the dict of its attributes, each tensor a
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` over a
  persistent id ``("storage", torch.FloatStorage, key, location, numel)``;
- ``<name>/data/<key>``: the raw bytes of each storage;
- ``<name>/code/__torch__/...py``: the class definitions, whose headers list the
  parameters and buffers (``__parameters__ = ["weight", "bias", ]``).

:func:`read_torchscript_state_dict` unpickles ``data.pkl`` with an allow-list
(``collections.OrderedDict``, ``_rebuild_tensor_v2``, the storage types, the list
builders of ``torch.jit._pickle``), each ``__torch__.*`` class becoming an inert
record of its state; any other global (``os.system``, ``builtins.exec``, …) is
refused. The class headers are read as text, never compiled or run.
"""

from __future__ import annotations

import ast
import collections
import io
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["is_torchscript_archive", "read_torchscript_state_dict"]

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}  # fmt: skip
_QUALIFIED_NAME = re.compile(r"__torch__(\.[A-Za-z_][A-Za-z0-9_]*)*")
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]+")
_CLASS_HEADER = re.compile(r"class ([A-Za-z_][A-Za-z0-9_]*)(?:\(([A-Za-z_][A-Za-z0-9_.]*)\))?:")
TRUST_HINT = (
    "Only if you trust the file, pass trust_code=True (torch.jit.load runs the archive's "
    "code), e.g. once to convert it: python -m resad_kit.clip.convert SRC DST.safetensors "
    "--trust-checkpoint"
)


class _ArchiveError(ValueError):
    """The archive cannot be read as weights alone (the message says why)."""


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a TorchScript zip (it has ``constants.pkl`` or a ``code/`` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(
            name.split("/")[-1] == "constants.pkl" or "/code/" in name
            for name in archive.namelist()
        )


@dataclass(frozen=True, slots=True)
class _StorageType:
    """What the pickle's ``torch.FloatStorage`` (etc.) global stands for: a dtype."""

    dtype: torch.dtype


@dataclass(frozen=True, slots=True)
class _Storage:
    """One storage of the archive as a flat tensor of its dtype."""

    flat: torch.Tensor


class _ScriptObject:
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
        raise _ArchiveError(f"a tensor is built over {type(storage).__name__}, not a storage")
    if not _is_int_tuple((offset,)) or not _is_int_tuple(size) or not _is_int_tuple(stride):
        raise _ArchiveError(f"a tensor has invalid offset/size/stride {offset}/{size}/{stride}")
    if len(size) != len(stride):  # type: ignore[arg-type]
        raise _ArchiveError(f"a tensor has size {size} but stride {stride}")
    flat = storage.flat
    try:
        return torch.empty(0, dtype=flat.dtype).set_(flat.untyped_storage(), offset, size, stride)
    except RuntimeError as err:
        raise _ArchiveError(f"a tensor does not fit its storage: {err}") from None


def _is_int_tuple(values: object) -> bool:
    return isinstance(values, tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    )


def _list_of(kind: type | tuple[type, ...]) -> Any:
    def build(values: object) -> list[Any]:
        if not isinstance(values, list) or not all(isinstance(v, kind) for v in values):
            raise _ArchiveError(f"a typed list holds something else: {type(values).__name__}")
        return values

    return build


def _restore_type_tag(value: object, type_str: object) -> object:
    return value


def _device(name: object) -> torch.device:
    if not isinstance(name, str):
        raise _ArchiveError(f"a device is named by {type(name).__name__}, not str")
    return torch.device(name)


class _Builder:
    """An allow-listed callable as data.pkl sees it: immutable (no BUILD can alter it)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value: object) -> None:
        raise _ArchiveError("data.pkl tries to modify one of the functions it may call")

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


class _Unpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` with the allow-list above; storages come from the zip."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix = archive, prefix
        self._classes: dict[str, type[_ScriptObject]] = {}
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if _QUALIFIED_NAME.fullmatch(qualified):
            if qualified not in self._classes:
                self._classes[qualified] = type(
                    name, (_ScriptObject,), {"qualified_name": qualified}
                )
            return self._classes[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise _ArchiveError(
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
            raise _ArchiveError(f"invalid storage reference in data.pkl: {pid!r}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if key in self._storages:
            storage = self._storages[key]
            if storage.flat.dtype != kind.dtype or storage.flat.numel() != numel:
                raise _ArchiveError(f"storage {key!r} is referenced with two different types")
            return storage
        storage = _Storage(self._read_storage(f"{self._prefix}data/{key}", kind.dtype, numel))
        self._storages[key] = storage
        return storage

    def _read_storage(self, member: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        try:
            info = self._archive.getinfo(member)
        except KeyError:
            raise _ArchiveError(f"the archive lacks the storage {member!r}") from None
        itemsize = torch.empty(0, dtype=dtype).element_size()
        nbytes = numel * itemsize
        if info.file_size != nbytes:
            raise _ArchiveError(
                f"storage {member!r} holds {info.file_size} bytes; data.pkl expects "
                f"{numel} × {itemsize} = {nbytes}"
            )
        flat = torch.empty(numel, dtype=dtype)
        view = memoryview(flat.view(torch.uint8).numpy())
        with self._archive.open(info) as stream:  # reads until full or the end
            if nbytes and stream.readinto(view) != nbytes:
                raise _ArchiveError(f"storage {member!r} ends early")
        return flat


@dataclass
class _ClassInfo:
    """What a class header in ``code/`` says (read as text, never compiled)."""

    is_module: bool
    parameters: list[str] | None = None
    buffers: list[str] | None = None
    sets_state: bool = False


def _parse_classes(text: str) -> dict[str, _ClassInfo]:
    """The class headers of one TorchScript code file, by class name."""
    classes: dict[str, _ClassInfo] = {}
    current: _ClassInfo | None = None
    for line in text.splitlines():
        header = _CLASS_HEADER.fullmatch(line)
        if header:
            current = classes[header.group(1)] = _ClassInfo(is_module=header.group(2) == "Module")
        elif line[:1] not in ("", " "):
            current = None
        elif current is not None:
            for attr in ("parameters", "buffers"):
                if line.startswith(f"  __{attr}__ = "):
                    setattr(current, attr, _names(line.split("=", 1)[1]))
            if line.startswith("  def __setstate__("):
                current.sets_state = True
    return classes


def _names(literal: str) -> list[str]:
    try:
        names = ast.literal_eval(literal.strip())
    except (ValueError, SyntaxError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _ArchiveError(f"unreadable parameter list in a class header: {literal.strip()!r}")
    return names


class _ClassTable:
    """Class headers of the archive's ``code/`` folder, parsed on first use per file."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        self._archive, self._prefix = archive, prefix
        self._files: dict[str, dict[str, _ClassInfo]] = {}

    def info(self, obj: _ScriptObject) -> _ClassInfo:
        module, _, name = obj.qualified_name.rpartition(".")
        member = f"{self._prefix}code/{module.replace('.', '/')}.py"
        if member not in self._files:
            try:
                text = self._archive.read(member).decode("utf-8")
            except (KeyError, UnicodeDecodeError):
                text = ""
            self._files[member] = _parse_classes(text)
        found = self._files[member].get(name)
        if found is None:
            raise _ArchiveError(f"the archive has no definition of class {obj.qualified_name!r}")
        if found.is_module and (found.parameters is None or found.buffers is None):
            raise _ArchiveError(
                f"the definition of module class {obj.qualified_name!r} does not list its "
                "__parameters__ and __buffers__ (an archive format this reader does not know)"
            )
        return found


def _collect(
    obj: _ScriptObject,
    prefix: str,
    table: _ClassTable,
    out: dict[str, torch.Tensor],
    active: set[int],
) -> None:
    """Add the parameters and buffers of module ``obj`` and its submodules to ``out``."""
    where = prefix[:-1] or "the root module"
    info = table.info(obj)
    if info.sets_state:
        raise _ArchiveError(
            f"{where} (class {obj.qualified_name!r}) restores its state with its own "
            "TorchScript __setstate__; its weights cannot be read without running that code"
        )
    state = obj.__dict__.get("state")
    if not isinstance(state, dict):
        raise _ArchiveError(f"{where} has no attribute dict in data.pkl")
    for name in [*info.parameters, *info.buffers]:  # type: ignore[misc]
        if name not in state:
            raise _ArchiveError(f"{where} lacks its parameter or buffer {name!r}")
        value = state[name]
        if value is None:
            continue  # an absent optional parameter (bias=False), as in nn.Module.state_dict
        if not isinstance(value, torch.Tensor):
            raise _ArchiveError(f"{where}.{name} is a {type(value).__name__}, not a tensor")
        out[prefix + name] = value
    active.add(id(obj))
    for name, value in state.items():
        if isinstance(value, _ScriptObject) and table.info(value).is_module:
            if id(value) in active:
                raise _ArchiveError(f"the module tree has a cycle at {prefix}{name}")
            _collect(value, f"{prefix}{name}.", table, out, active)
    active.discard(id(obj))


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    names = set(archive.namelist())
    prefixes = sorted(
        name[: -len("data.pkl")]
        for name in names
        if name.endswith("/data.pkl") and name.count("/") == 1
    )
    if len(prefixes) != 1:
        raise _ArchiveError(f"expected one <name>/data.pkl in the zip, found {len(prefixes)}")
    prefix = prefixes[0]
    order = names.intersection({f"{prefix}byteorder"})
    if order and archive.read(f"{prefix}byteorder").decode(errors="replace") != sys.byteorder:
        raise _ArchiveError(f"its tensors are stored in another byte order than {sys.byteorder}")
    return prefix


def read_torchscript_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive, read without running any of its code.

    The result has the names, order and values of
    ``torch.jit.load(path).state_dict()`` (parameters and buffers of every
    module; plain tensor attributes and TorchScript-class objects are not
    weights and are left out), as CPU tensors.

    Args:
        path: a file written by ``torch.jit.save`` (OpenAI's ``ViT-L-14-336px.pt``).

    Returns:
        ``{"visual.conv1.weight": tensor, ...}``.

    Raises:
        ValueError: the file is not a TorchScript archive, its ``data.pkl`` refers to
            anything but weights (``os.system``, …: refused before anything runs), a
            module restores its state with its own ``__setstate__`` code (which only
            ``trust_code=True`` may run), or a storage does not fit its tensors.

    Example:
        >>> import torch, warnings
        >>> from resad_kit.clip.torchscript import read_torchscript_state_dict
        >>> path = getfixture("tmp_path") / "linear.pt"
        >>> with warnings.catch_warnings():  # torch.jit.script is deprecated
        ...     warnings.simplefilter("ignore", FutureWarning)
        ...     torch.jit.script(torch.nn.Linear(3, 2)).save(str(path))
        >>> state = read_torchscript_state_dict(path)
        >>> {k: tuple(v.shape) for k, v in state.items()}
        {'weight': (2, 3), 'bias': (2,)}
    """
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _archive_prefix(archive)
            root = _Unpickler(archive.read(f"{prefix}data.pkl"), archive, prefix).load()
            if not isinstance(root, _ScriptObject):
                raise _ArchiveError(f"data.pkl holds {type(root).__name__}, not a module")
            table = _ClassTable(archive, prefix)
            if not table.info(root).is_module:
                raise _ArchiveError(f"data.pkl holds {root.qualified_name!r}, not a module")
            state: dict[str, torch.Tensor] = {}
            _collect(root, "", table, state, set())
    except _ArchiveError as err:
        raise ValueError(
            f"{os.fspath(path)} is a TorchScript archive that cannot be read as weights alone: "
            f"{err}. {TRUST_HINT}"
        ) from None
    except Exception as err:  # anything else the pickle machinery raises on a broken file
        raise ValueError(
            f"{os.fspath(path)}: corrupt TorchScript archive ({type(err).__name__}: {err})"
        ) from err
    return state
