"""TorchScript archives are read as weights only: no code from the file runs unless trusted."""

from __future__ import annotations

import os
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from resad_kit.clip.checkpoints import read_state_dict
from resad_kit.clip.torchscript import is_torchscript_archive, read_torchscript_state_dict


def _quiet(call: Callable[[], object]) -> object:
    with warnings.catch_warnings():  # TorchScript is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return call()


def _save_scripted(module: nn.Module, path: Path) -> Path:
    _quiet(lambda: torch.jit.script(module).save(str(path)))
    return path


def _jit_state(path: Path) -> dict[str, torch.Tensor]:
    return dict(_quiet(lambda: torch.jit.load(str(path)).state_dict()))  # type: ignore[union-attr]


class Payload:
    """A TorchScript class whose __setstate__ prints: code that torch.jit.load runs."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __getstate__(self) -> int:
        return self.n

    def __setstate__(self, state: int) -> None:
        print("PAYLOAD RAN", state)
        self.n = state


_quiet(lambda: torch.jit.script(Payload))  # a TorchScript class from here on


class Inner(nn.Module):
    """Buffers of several dtypes, a strided view, a plain tensor and a Payload attribute."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(3, 2)
        base = torch.randn(4, 6, generator=g, dtype=torch.float64)
        self.register_buffer("view", base[1:, ::2])  # offset 6, stride (6, 2) into base
        self.register_buffer("halves", torch.randn(5, generator=g).half())
        self.register_buffer("bf16", torch.randn(2, 3, generator=g).bfloat16())
        self.register_buffer("steps", torch.arange(7))
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("empty", torch.zeros(0))
        self.plain = torch.ones(2)  # an attribute, not a buffer: not in the state dict
        self.payload = Payload(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.plain + self.view.sum() + self.payload.n


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.blocks = nn.ModuleList([nn.LayerNorm(2), nn.Linear(2, 2, bias=False)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inner(x)
        for block in self.blocks:
            x = block(x)
        return x


class OwnSetstate(nn.Module):
    """A module that restores its own state with TorchScript code (which prints)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.arange(3.0))

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("SETSTATE RAN")
        self.w = state[0]
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


@pytest.fixture(scope="module")
def outer_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_scripted(Outer(), tmp_path_factory.mktemp("ts") / "outer.pt")


def _rewrite(src: Path, dst: Path, members: dict[str, bytes | None]) -> Path:
    """A copy of the zip ``src`` with members (named below the top folder) replaced (bytes)
    or removed (None)."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        top = old.namelist()[0].split("/")[0]
        replaced = {f"{top}/{name}": data for name, data in members.items()}
        for info in old.infolist():
            data = replaced.get(info.filename, old.read(info))
            if data is not None:
                new.writestr(info, data)
    return dst


def test_default_load_runs_no_code_and_equals_jit_load(outer_archive, capfd):
    """The archive holds a TorchScript __setstate__ that prints. The default reader (what
    ClipBackbone.from_pretrained uses) gives exactly torch.jit.load(...).state_dict() (same
    names, order, dtypes, strides, values; plain tensor attributes and None biases left out)
    and the code never runs; torch.jit.load on the same file does run it (the old behaviour)."""
    assert is_torchscript_archive(outer_archive)
    ours = read_state_dict(outer_archive)
    assert "PAYLOAD RAN" not in capfd.readouterr().out
    reference = _jit_state(outer_archive)
    assert "PAYLOAD RAN 7" in capfd.readouterr().out
    assert list(ours) == list(reference)
    assert "inner.plain" not in ours
    assert "blocks.1.bias" not in ours
    for name, tensor in reference.items():
        got = ours[name]
        assert (got.dtype, got.shape, got.stride()) == (tensor.dtype, tensor.shape, tensor.stride())
        assert torch.equal(got, tensor), name
    assert ours["inner.view"].storage_offset() == 6


def test_trust_code_uses_jit_load(outer_archive, capfd):
    """trust_code=True is the explicit opt-in to torch.jit.load: the archive's code runs."""
    state = read_state_dict(outer_archive, trust_code=True)
    assert "PAYLOAD RAN 7" in capfd.readouterr().out
    assert list(state) == list(read_torchscript_state_dict(outer_archive))


def test_module_with_its_own_setstate_is_refused_unless_trusted(tmp_path, capfd):
    """A module whose state only its own TorchScript __setstate__ can restore cannot be read
    as weights alone: refused with a message naming the opt-in, and its code does not run."""
    path = _save_scripted(OwnSetstate(), tmp_path / "own.pt")
    with pytest.raises(ValueError, match=r"restores its state with its own TorchScript") as info:
        read_state_dict(path)
    assert "trust_code=True" in str(info.value)
    assert "--trust-checkpoint" in str(info.value)
    assert "SETSTATE RAN" not in capfd.readouterr().out
    state = read_state_dict(path, trust_code=True)
    assert "SETSTATE RAN" in capfd.readouterr().out
    assert torch.equal(state["w"], torch.arange(3.0))


class _Exec:
    """Pickles as a call of ``builtins.exec`` that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize(
    ("payload", "named"), [(_Exec, "exec"), (_System, "system")], ids=["exec", "system"]
)
def test_a_data_pkl_calling_anything_else_is_refused_before_it_runs(
    outer_archive, tmp_path, payload, named
):
    """data.pkl is unpickled with an allow-list: a global such as builtins.exec or os.system
    is refused by name and never called (the marker file is not created)."""
    marker = tmp_path / "ran"
    evil = pickle.dumps(payload(marker), protocol=2)
    if payload is _Exec:  # the payload is real: an unrestricted unpickler creates the marker
        pickle.loads(evil)
        assert marker.exists()
        marker.unlink()
    path = _rewrite(outer_archive, tmp_path / "evil.pt", {"data.pkl": evil})
    with pytest.raises(ValueError, match=rf"refers to '[\w.]*\.{named}'.*nothing was run"):
        read_state_dict(path)
    assert not marker.exists()


def test_a_data_pkl_cannot_alter_the_functions_it_may_call(outer_archive, tmp_path):
    """BUILD on an allow-listed global (here setting ``__defaults__`` of the tensor
    builder, which would change it for every later load in the process) is refused."""
    evil = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"  # the allowed global
        b"N}X\x0c\x00\x00\x00__defaults__)s\x86b."  # BUILD (None, {"__defaults__": ()})
    )
    path = _rewrite(outer_archive, tmp_path / "evil.pt", {"data.pkl": evil})
    with pytest.raises(ValueError, match="tries to modify one of the functions it may call"):
        read_torchscript_state_dict(path)
    assert read_torchscript_state_dict(outer_archive)  # still works


def _set_numel(data_pkl: bytes, key: str, numel: int) -> tuple[bytes, int]:
    """data.pkl with the element count in the persistent id of storage ``key`` changed to
    ``numel`` (a BININT1), and the count it had."""
    ops = [op for op in pickletools.genops(data_pkl) if op[0].name != "BINPUT"]
    for i, (op, arg, _) in enumerate(ops):
        if op.name == "BINUNICODE" and arg == key and ops[i - 2][1] == "storage":
            count_op, count, pos = ops[i + 2]  # key, location ('cpu'), numel
            assert count_op.name == "BININT1"
            return data_pkl[: pos + 1] + bytes([numel]) + data_pkl[pos + 2 :], count
    raise AssertionError(f"storage {key} not found")


def test_damaged_archives_give_clear_errors(outer_archive, tmp_path):
    """Each way a file can be damaged is a ValueError that says what is wrong."""
    with zipfile.ZipFile(outer_archive) as archive:
        top = archive.namelist()[0].split("/")[0]
        data_pkl = archive.read(f"{top}/data.pkl")
        first = archive.read(f"{top}/data/0")
    shrunk, numel = _set_numel(data_pkl, "0", 1)
    cases = {
        r"storage '.*data/0' holds \d+ bytes; data\.pkl expects": {"data/0": first[:-4]},
        r"lacks the storage '.*data/1'": {"data/1": None},
        r"no definition of class '__torch__\.torch\.nn\.modules\.normalization\.LayerNorm'": {
            "code/__torch__/torch/nn/modules/normalization.py": None
        },
        r"does not fit its storage": {
            "data.pkl": shrunk,  # one element, consistent with the bytes, too few for the tensor
            "data/0": first[: len(first) // numel],
        },
        r"expected one <name>/data\.pkl": {"data.pkl": None},
        r"corrupt TorchScript archive": {"data.pkl": data_pkl[:40]},
    }
    for i, (message, members) in enumerate(cases.items()):
        path = _rewrite(outer_archive, tmp_path / f"damaged{i}.pt", members)
        with pytest.raises(ValueError, match=message):
            read_torchscript_state_dict(path)


def test_a_torch_save_pickle_stays_weights_only(tmp_path):
    """Plain checkpoints go through torch.load(weights_only=True): a pickle that calls
    builtins.exec is refused and does not run."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "hook": _Exec(marker)}, path)
    assert not is_torchscript_archive(path)
    with pytest.raises(pickle.UnpicklingError, match="exec"):
        read_state_dict(path)
    assert not marker.exists()
