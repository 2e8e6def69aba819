"""ClipBackbone.from_pretrained with an architecture open_clip has not registered."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from resad_kit.clip import ClipBackbone
from resad_kit.clip.architecture import infer_architecture

# A "distilled" CLIP: other width, depth and embedding than any open_clip name.
CONFIG = {
    "embed_dim": 48,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 3, "mlp_ratio": 2},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "layers": 2},
}
OPTIONS = {"image_size": 32, "layers": None, "vv_blocks": None}


@pytest.fixture(scope="module")
def source() -> open_clip.CLIP:
    torch.manual_seed(0)
    return open_clip.CLIP(**CONFIG, quick_gelu=True).eval()


def _same_outputs(loaded: ClipBackbone, source: open_clip.CLIP) -> None:
    reference = ClipBackbone(source, loaded.config)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b = loaded(images), reference(images)
    assert torch.equal(a.cls, b.cls)
    assert all(torch.equal(x, y) for x, y in zip(a.patches, b.patches, strict=True))
    assert loaded.depth == 3
    assert loaded.width == 128
    assert loaded.embed_dim == 48


def test_inferred_architecture_equals_the_source_config(source):
    inferred = infer_architecture(source.state_dict())
    assert inferred["vision_cfg"] == {
        "image_size": 32,
        "patch_size": 8,
        "width": 128,
        "layers": 3,
        "head_width": 64,
        "mlp_ratio": 2.0,
    }
    assert inferred["embed_dim"] == 48
    assert inferred["text_cfg"]["layers"] == 2
    assert inferred["text_cfg"]["heads"] == 2


@pytest.mark.parametrize("how", ["mapping", "json", "hf_json", "infer"])
def test_unregistered_architecture_loads_with_identical_outputs(source, tmp_path, how):
    weights = tmp_path / "distilled.pt"
    torch.save(source.state_dict(), weights)
    architecture: object = CONFIG
    if how == "json":
        architecture = tmp_path / "arch.json"
        architecture.write_text(json.dumps(CONFIG))
    elif how == "hf_json":
        architecture = tmp_path / "open_clip_config.json"
        architecture.write_text(json.dumps({"model_cfg": CONFIG, "preprocess_cfg": {}}))
    elif how == "infer":
        architecture = "infer"
    loaded = ClipBackbone.from_pretrained(
        "distilled", weights, architecture=architecture, quick_gelu=True, **OPTIONS
    )
    assert loaded.trained
    assert "distilled.pt" in loaded.weights
    _same_outputs(loaded, source)


def test_registered_name_alone_cannot_load_it(source, tmp_path):
    """Without `architecture` the checkpoint does not fit any registered model: a clear error."""
    weights = tmp_path / "distilled.pt"
    torch.save(source.state_dict(), weights)
    with pytest.raises(ValueError, match="does not fit the architecture"):
        ClipBackbone.from_pretrained("ViT-B-16", weights, quick_gelu=True, **OPTIONS)


def test_architecture_errors(source, tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(source.state_dict(), weights)
    with pytest.raises(ValueError, match="QuickGELU"):
        ClipBackbone.from_pretrained("x", weights, architecture=CONFIG, **OPTIONS)
    with pytest.raises(ValueError, match="embed_dim"):
        ClipBackbone.from_pretrained("x", weights, architecture={"a": 1}, quick_gelu=True)
    with pytest.raises(ValueError, match="not a file"):
        ClipBackbone.from_pretrained("x", weights, architecture="/no/arch.json", quick_gelu=True)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        ClipBackbone.from_pretrained("x", None, architecture="infer", quick_gelu=True)
    with pytest.raises(ValueError, match="cannot infer"):
        infer_architecture({"visual.conv1.weight": torch.zeros(64, 3, 8, 8)})
    small = dict(CONFIG, vision_cfg=dict(CONFIG["vision_cfg"], width=64, layers=2))
    with pytest.raises(ValueError, match="does not fit"):
        ClipBackbone.from_pretrained("x", weights, architecture=small, quick_gelu=True, **OPTIONS)


def test_random_weights_with_an_architecture():
    backbone = ClipBackbone.from_pretrained(
        "distilled", None, architecture=CONFIG, quick_gelu=False, **OPTIONS
    )
    assert not backbone.trained
    assert backbone.width == 128


@pytest.mark.parametrize("trust", [False, True])
def test_trust_checkpoint_reaches_the_loader(source, tmp_path, monkeypatch, trust):
    from resad_kit.clip import checkpoints

    seen = []
    real = checkpoints.read_state_dict

    def spy(path, *, trust_code=False):
        seen.append(trust_code)
        return real(path, trust_code=False)

    monkeypatch.setattr(checkpoints, "read_state_dict", spy)
    weights = tmp_path / "w.pt"
    torch.save(source.state_dict(), weights)
    ClipBackbone.from_pretrained(
        "d", weights, architecture="infer", quick_gelu=True, trust_checkpoint=trust, **OPTIONS
    )
    assert seen
    assert set(seen) == {trust}
