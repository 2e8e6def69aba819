"""Loading weights: local checkpoint files, pretrained tags offline, clear errors (no network)."""

from __future__ import annotations

import warnings

import huggingface_hub.constants
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from resad_kit.clip import ClipBackbone, WeightsNotFoundError
from resad_kit.clip.checkpoints import (
    TINY_MODEL_NAME,
    build_model,
    load_weights,
    read_state_dict,
    resolve_quick_gelu,
)

TINY = {"image_size": 64, "layers": None, "vv_blocks": None}


@pytest.fixture(scope="module")
def source() -> ClipBackbone:
    return ClipBackbone.tiny(seed=3)


def _same_outputs(a: ClipBackbone, b: ClipBackbone) -> None:
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fa, fb = a(images), b(images)
    assert all(torch.equal(x, y) for x, y in zip(fa.patches, fb.patches, strict=True))
    assert torch.equal(fa.cls, fb.cls)
    prompts = ["a photo of a damaged object.", "itap of a object."]
    assert torch.equal(a.encode_text(prompts), b.encode_text(prompts))


def _save_pt(model, path):
    torch.save(model.state_dict(), path)


def _save_wrapped_ddp(model, path):  # {"state_dict": {"module.…": …}}, as training scripts write
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)


def _save_safetensors(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _save_torchscript(model, path):  # the form of OpenAI's ViT-L-14-336px.pt
    image = torch.zeros(1, 3, 32, 32)
    text = torch.zeros(1, 77, dtype=torch.long)
    text[0, :3] = torch.tensor([49406, 320, 49407])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, (image, text), check_trace=False).save(str(path))


@pytest.mark.parametrize(
    ("suffix", "save"),
    [
        (".pt", _save_pt),
        (".bin", _save_wrapped_ddp),
        (".safetensors", _save_safetensors),
        (".pt", _save_torchscript),
    ],
    ids=["torch-save", "wrapped-ddp", "safetensors", "torchscript"],
)
def test_checkpoint_round_trip_gives_identical_outputs(source, tmp_path, suffix, save):
    path = tmp_path / f"weights{suffix}"
    save(source.model, path)
    loaded = ClipBackbone.from_pretrained(TINY_MODEL_NAME, path, **TINY)
    assert loaded.trained
    assert loaded.weights == f"file {path}"
    assert isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    _same_outputs(source, loaded)


def test_openai_format_archive_loads_without_jit_load(source, tmp_path, monkeypatch):
    """OpenAI's TorchScript format loads without torch.jit.load (which runs the archive's
    code): the state dict read equals jit.load's, and the backbone computes the same outputs.
    torch.jit.load is used only with the explicit trust_code=True."""
    path = tmp_path / "ViT-tiny.pt"
    _save_torchscript(source.model, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        reference = torch.jit.load(str(path)).state_dict()
    real_load, calls = torch.jit.load, []

    def recording_load(*args, **kwargs):
        calls.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", recording_load)
    state = read_state_dict(path)
    assert list(state) == list(reference)
    assert all(torch.equal(state[k], v) for k, v in reference.items())
    _same_outputs(source, ClipBackbone.from_pretrained(TINY_MODEL_NAME, path, **TINY))
    assert calls == []
    trusted = build_model(TINY_MODEL_NAME, quick_gelu=True)
    load_weights(trusted, path, TINY_MODEL_NAME, trust_code=True)
    assert len(calls) == 1
    expected = source.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in trusted.state_dict().items())


def test_a_path_given_as_a_string(source, tmp_path):
    path = tmp_path / "weights.pt"
    _save_pt(source.model, path)
    _same_outputs(source, ClipBackbone.from_pretrained(TINY_MODEL_NAME, str(path), **TINY))


def test_missing_file_says_what_and_how(tmp_path):
    missing = tmp_path / "nowhere" / "ViT-L-14-336px.pt"
    with pytest.raises(WeightsNotFoundError) as info:
        ClipBackbone.from_pretrained("ViT-L-14-336", missing)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert f"checkpoint file not found: {missing}" in message
    assert "--checkpoint /path/to/file" in message
    assert "pretrained tags ['openai']" in message
    assert "Random weights are never used" in message
    with pytest.raises(WeightsNotFoundError, match="is a directory, not a file"):
        ClipBackbone.from_pretrained(TINY_MODEL_NAME, tmp_path)


def test_tag_without_network_or_cache_says_what_was_tried(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "cache"
    with pytest.raises(WeightsNotFoundError) as info:
        ClipBackbone.from_pretrained("ViT-L-14-336", "openai", cache_dir=str(cache))
    message = str(info.value)
    assert "could not obtain the 'openai' weights of 'ViT-L-14-336'" in message
    assert (
        f"Hugging Face Hub repo 'timm/vit_large_patch14_clip_336.openai', cache {cache}" in message
    )
    assert f"hf download timm/vit_large_patch14_clip_336.openai --cache-dir {cache}" in message
    assert "curl -L -O https://openaipublic.azureedge.net/clip/models/" in message
    assert "ClipBackbone.from_pretrained('ViT-L-14-336', '/path/to/file')" in message
    assert "--checkpoint /path/to/file" in message
    assert info.value.__cause__ is not None


def test_tag_over_plain_url_without_network(tmp_path, monkeypatch, no_network):
    """Without huggingface_hub open_clip uses the URL; the error names it and its cache."""
    monkeypatch.setattr(open_clip.pretrained, "has_hf_hub", lambda necessary=False: False)
    cache = tmp_path / "clip"
    with pytest.raises(WeightsNotFoundError) as info:
        ClipBackbone.from_pretrained("ViT-L-14-336", "openai", cache_dir=str(cache))
    message = str(info.value)
    assert "URL https://openaipublic.azureedge.net/clip/models/" in message
    assert f"cache {cache}" in message
    assert "network access is disabled in this test" in message


def test_a_cached_tag_loads_offline(source, tmp_path, monkeypatch, no_network):
    """The tag path reads the file open_clip's cache gives (here a stand-in entry)."""
    path = tmp_path / "cached.safetensors"
    _save_safetensors(source.model, path)
    fake = {"file": str(path), "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.25,) * 3}
    monkeypatch.setattr(
        "resad_kit.clip.checkpoints.get_pretrained_cfg",
        lambda model, tag: dict(fake) if tag == "cachedtag" else {},
    )
    loaded = ClipBackbone.from_pretrained(TINY_MODEL_NAME, "cachedtag", **TINY)
    assert loaded.weights == "cachedtag"
    assert loaded.mean == (0.5, 0.5, 0.5)
    assert loaded.preprocess.std == (0.25, 0.25, 0.25)
    _same_outputs(source, loaded)


def test_unknown_names_and_tags():
    with pytest.raises(ValueError, match=r"'laion' is neither a pretrained tag .* \['openai'\]"):
        ClipBackbone.from_pretrained("ViT-L-14-336", "laion")
    with pytest.raises(ValueError, match="unknown architecture 'ViT-Z-99'"):
        ClipBackbone.from_pretrained("ViT-Z-99", None)
    with pytest.raises(ValueError, match="schemas like 'hf-hub:' are not supported"):
        ClipBackbone.from_pretrained("hf-hub:org/repo", None)
    with pytest.raises(ValueError, match="no plain ViT image tower"):
        ClipBackbone.from_pretrained("RN50", None)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['vv_num_blocks'\]"):
        ClipBackbone.from_pretrained(TINY_MODEL_NAME, None, vv_num_blocks=19)
    with pytest.raises(TypeError, match="`pretrained` must be a pretrained tag, a file path"):
        ClipBackbone.from_pretrained(TINY_MODEL_NAME, 3)


def test_checkpoint_of_another_architecture_is_refused(source, tmp_path):
    state = source.model.state_dict()
    del state["visual.proj"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"does not fit the architecture 'resad-tiny'.*visual\.proj"
    ):
        ClipBackbone.from_pretrained(TINY_MODEL_NAME, path, **TINY)


def test_unreadable_file_is_refused(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"could not read the checkpoint .*notes\.pt"):
        ClipBackbone.from_pretrained(TINY_MODEL_NAME, path)


def test_random_weights_only_when_asked_and_labelled():
    backbone = ClipBackbone.from_pretrained(TINY_MODEL_NAME, None, **TINY)
    assert backbone.trained is False
    assert "weights='untrained: random init'" in repr(backbone)


def test_quick_gelu_follows_the_weights():
    assert resolve_quick_gelu("ViT-L-14-336", "openai", None) is True  # the tag says so
    assert resolve_quick_gelu("ViT-L-14-336", "/weights/ViT-L-14-336px.pt", None) is True
    assert resolve_quick_gelu("ViT-L-14-336-quickgelu", None, None) is True
    assert resolve_quick_gelu("ViT-B-32", "openai", None) is True
    assert resolve_quick_gelu("ViT-B-32", "laion2b_s34b_b79k", None) is False
    assert resolve_quick_gelu("ViT-L-14-336", "openai", False) is False  # explicit wins
    with pytest.warns(UserWarning, match="Pass quick_gelu=True if the file holds OpenAI"):
        assert resolve_quick_gelu("ViT-B-32", "/weights/b32.bin", None) is False
