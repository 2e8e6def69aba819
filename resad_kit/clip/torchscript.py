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
refused (the unpickler lives in ``_torchscript_pickle.py``). The class headers are read
as text, never compiled or run.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import zipfile
from dataclasses import dataclass

import torch

from resad_kit.clip._torchscript_pickle import ArchiveError, ArchiveUnpickler, ScriptObject

__all__ = ["is_torchscript_archive", "read_torchscript_state_dict"]

_CLASS_HEADER = re.compile(r"class ([A-Za-z_][A-Za-z0-9_]*)(?:\(([A-Za-z_][A-Za-z0-9_.]*)\))?:")
TRUST_HINT = (
    "Only if you trust the file, pass trust_code=True (torch.jit.load runs the archive's "
    "code), e.g. once to convert it: python -m resad_kit.clip.convert SRC DST.safetensors "
    "--trust-checkpoint"
)


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a TorchScript zip (it has ``constants.pkl`` or a ``code/`` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(
            name.split("/")[-1] == "constants.pkl" or "/code/" in name
            for name in archive.namelist()
        )


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
        raise ArchiveError(f"unreadable parameter list in a class header: {literal.strip()!r}")
    return names


class _ClassTable:
    """Class headers of the archive's ``code/`` folder, parsed on first use per file."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        self._archive, self._prefix = archive, prefix
        self._files: dict[str, dict[str, _ClassInfo]] = {}

    def info(self, obj: ScriptObject) -> _ClassInfo:
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
            raise ArchiveError(f"the archive has no definition of class {obj.qualified_name!r}")
        if found.is_module and (found.parameters is None or found.buffers is None):
            raise ArchiveError(
                f"the definition of module class {obj.qualified_name!r} does not list its "
                "__parameters__ and __buffers__ (an archive format this reader does not know)"
            )
        return found


def _collect(
    obj: ScriptObject,
    prefix: str,
    table: _ClassTable,
    out: dict[str, torch.Tensor],
    active: set[int],
) -> None:
    """Add the parameters and buffers of module ``obj`` and its submodules to ``out``."""
    where = prefix[:-1] or "the root module"
    info = table.info(obj)
    if info.sets_state:
        raise ArchiveError(
            f"{where} (class {obj.qualified_name!r}) restores its state with its own "
            "TorchScript __setstate__; its weights cannot be read without running that code"
        )
    state = obj.__dict__.get("state")
    if not isinstance(state, dict):
        raise ArchiveError(f"{where} has no attribute dict in data.pkl")
    for name in [*info.parameters, *info.buffers]:  # type: ignore[misc]
        if name not in state:
            raise ArchiveError(f"{where} lacks its parameter or buffer {name!r}")
        value = state[name]
        if value is None:
            continue  # an absent optional parameter (bias=False), as in nn.Module.state_dict
        if not isinstance(value, torch.Tensor):
            raise ArchiveError(f"{where}.{name} is a {type(value).__name__}, not a tensor")
        out[prefix + name] = value
    active.add(id(obj))
    for name, value in state.items():
        if isinstance(value, ScriptObject) and table.info(value).is_module:
            if id(value) in active:
                raise ArchiveError(f"the module tree has a cycle at {prefix}{name}")
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
        raise ArchiveError(f"expected one <name>/data.pkl in the zip, found {len(prefixes)}")
    prefix = prefixes[0]
    order = names.intersection({f"{prefix}byteorder"})
    if order and archive.read(f"{prefix}byteorder").decode(errors="replace") != sys.byteorder:
        raise ArchiveError(f"its tensors are stored in another byte order than {sys.byteorder}")
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
            root = ArchiveUnpickler(archive.read(f"{prefix}data.pkl"), archive, prefix).load()
            if not isinstance(root, ScriptObject):
                raise ArchiveError(f"data.pkl holds {type(root).__name__}, not a module")
            table = _ClassTable(archive, prefix)
            if not table.info(root).is_module:
                raise ArchiveError(f"data.pkl holds {root.qualified_name!r}, not a module")
            state: dict[str, torch.Tensor] = {}
            _collect(root, "", table, state, set())
    except ArchiveError as err:
        raise ValueError(
            f"{os.fspath(path)} is a TorchScript archive that cannot be read as weights alone: "
            f"{err}. {TRUST_HINT}"
        ) from None
    except Exception as err:  # anything else the pickle machinery raises on a broken file
        raise ValueError(
            f"{os.fspath(path)}: corrupt TorchScript archive ({type(err).__name__}: {err})"
        ) from err
    return state
