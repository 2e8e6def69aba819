"""convert_to_safetensors and `python -m resad_kit.clip.convert`: one line to a safe file."""

from __future__ import annotations

import copy
import runpy
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from resad_kit.clip import ClipBackbone, convert, convert_to_safetensors
from resad_kit.clip.checkpoints import TINY_MODEL_NAME, read_state_dict
from resad_kit.clip.convert import main

TINY = {"image_size": 64, "layers": None, "vv_blocks": None}


class _Half(nn.Module):
    """float16 weights (as OpenAI's), a tied view, and a TorchScript __setstate__ (prints)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.arange(6.0).half().reshape(2, 3))
        self.register_buffer("row", self.w.detach()[1])  # shares the storage of w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        return (self.w, self.row, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, torch.Tensor, bool]) -> None:
        print("SETSTATE RAN")
        self.w = state[0]
        self.row = state[1]
        self.training = state[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.row


def _script(module: nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(module).save(str(path))


@pytest.fixture(scope="module")
def openai_like(tmp_path_factory):
    """The tiny CLIP traced to a TorchScript archive with OpenAI's extra buffers."""
    source = ClipBackbone.tiny(seed=5)
    model = copy.deepcopy(source.model)
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(model, name):  # open_clip keeps some as plain ints
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    image = torch.zeros(1, 3, 32, 32)
    text = torch.zeros(1, 77, dtype=torch.long)
    text[0, :3] = torch.tensor([49406, 320, 49407])
    path = tmp_path_factory.mktemp("openai") / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, (image, text), check_trace=False).save(str(path))
    return source, path


def test_openai_archive_converts_and_loads_with_identical_outputs(openai_like, tmp_path):
    """The converted file holds exactly the archive's weights (OpenAI's extras dropped), and a
    backbone loaded from it computes what the source computes."""
    source, path = openai_like
    out = convert_to_safetensors(path, tmp_path / "tiny.safetensors")
    assert out == tmp_path / "tiny.safetensors"
    converted = load_file(out)
    state = read_state_dict(path)
    assert set(converted) == set(state)
    assert not {"input_resolution", "context_length", "vocab_size"} & set(converted)
    assert all(torch.equal(converted[k], v) for k, v in state.items())
    loaded = ClipBackbone.from_pretrained(TINY_MODEL_NAME, out, **TINY)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(images).cls, source(images).cls)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]  # no temporary left


def test_dtypes_and_shared_storage_survive_and_trust_is_explicit(tmp_path, capfd):
    """float16 stays float16 and tensors sharing a storage are written as copies; an archive
    whose module runs its own __setstate__ converts only with trust_code=True (or
    --trust-checkpoint), and before that no code runs and no file is written."""
    src, dst = tmp_path / "half.pt", tmp_path / "half.safetensors"
    _script(_Half(), src)
    with pytest.raises(ValueError, match="trust_code=True"):
        convert_to_safetensors(src, dst)
    assert "SETSTATE RAN" not in capfd.readouterr().out
    assert not dst.exists()
    assert main([str(src), str(dst)]) == 2
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "--trust-checkpoint" in err
    assert main([str(src), str(dst), "--trust-checkpoint"]) == 0
    assert "SETSTATE RAN" in capfd.readouterr().out
    converted = load_file(dst)
    assert converted["w"].dtype == torch.float16
    assert torch.equal(converted["row"], torch.tensor([3.0, 4.0, 5.0]).half())


def test_refusals_leave_files_alone(tmp_path):
    """No silent overwrite, no conversion onto the source, only .safetensors outputs."""
    src = tmp_path / "w.pt"
    torch.save({"module.weight": torch.ones(2)}, src)  # a DDP prefix, removed on the way
    dst = tmp_path / "w.safetensors"
    save_file({"old": torch.zeros(1)}, str(dst))
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        convert_to_safetensors(src, dst)
    assert set(load_file(dst)) == {"old"}
    assert set(load_file(convert_to_safetensors(src, dst, overwrite=True))) == {"weight"}
    with pytest.raises(ValueError, match="the same file"):
        convert_to_safetensors(dst, dst, overwrite=True)
    with pytest.raises(ValueError, match=r"`dst` must end in \.safetensors"):
        convert_to_safetensors(src, tmp_path / "w.bin")
    with pytest.raises(FileNotFoundError, match="`src` is not a file"):
        convert_to_safetensors(tmp_path / "missing.pt", tmp_path / "m.safetensors")
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(FileExistsError, match="is a directory"):
        convert_to_safetensors(src, tmp_path / "d.safetensors", overwrite=True)
    torch.save({"weight": torch.ones(1), "epoch": 3}, src)
    with pytest.raises(ValueError, match=r"non-tensor entries \['epoch'\]"):
        convert_to_safetensors(src, tmp_path / "e.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.safetensors", "w.pt", "w.safetensors"]


def test_module_entry_point(tmp_path, monkeypatch, capsys):
    """`python -m resad_kit.clip.convert SRC DST` works as documented (the module's file run
    as __main__, in-process: a subprocess would import torch again)."""
    src, dst = tmp_path / "w.pt", tmp_path / "w.safetensors"
    torch.save({"weight": torch.arange(3.0)}, src)
    monkeypatch.setattr(sys, "argv", ["convert", str(src), str(dst)])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(convert.__file__, run_name="__main__")
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"wrote {dst}"
    assert torch.equal(load_file(dst)["weight"], torch.arange(3.0))
