"""The presets' fusion weights and layer taps, against the values the paper and code give.

Sources: fusion weights of eq. 5 from App. F.2 (pixel text : visual : residual = 0.1 : 1 : 1
training-free, 0.1 : 1 : 0.1 fine-tuned; image 1 : 1 : 1 and 1 : 1 : 0.1), the same in the
official code (``hito2448/Res2CLIP``); residual-branch layers from App. F.2 and the code
(layer 24 only training-free, layers 6, 12, 18, 24 fine-tuned); text branch layer 24 and
visual branch all four layers in both modes.
"""

from __future__ import annotations

import pytest

from resad_kit.clip import ClipBackbone
from resad_kit.methods import Res2CLIP, Res2CLIPConfig

# mode → (pixel weights, image weights, residual taps, taps resolved on 4 tapped layers)
EXPECTED = {
    "training_free": ((0.1, 1.0, 1.0), (1.0, 1.0, 1.0), (-1,), (3,)),
    "fine_tuned": ((0.1, 1.0, 0.1), (1.0, 1.0, 0.1), "all", (0, 1, 2, 3)),
}
PRESETS = {"paper": Res2CLIPConfig.paper, "official_code": Res2CLIPConfig.official_code}


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=0)  # 4 taps, like layers 6, 12, 18, 24 of ViT-L/14


@pytest.mark.parametrize("mode", sorted(EXPECTED))
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_fusion_weights_and_taps(backbone, preset, mode):
    """Each preset in each mode has the paper's fusion weights and branch layers."""
    pixel, image, residual_taps, resolved = EXPECTED[mode]
    config = PRESETS[preset](mode)
    assert config.mode == mode
    assert config.pixel_weights == pixel
    assert config.image_weights == image
    assert config.residual_taps == residual_taps
    assert config.text_taps == (-1,)
    assert config.visual_taps == "all"
    model = Res2CLIP(backbone, config)
    assert model.taps == {"text": (3,), "visual": (0, 1, 2, 3), "residual": resolved}
    assert model.used_taps == (0, 1, 2, 3)
    assert (model.adapters is None) == (mode == "training_free")


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_paper_and_official_presets_share_weights_and_taps(mode):
    """Fusion and layers are not among the code's departures from the paper."""
    paper, code = Res2CLIPConfig.paper(mode), Res2CLIPConfig.official_code(mode)
    for field in ("pixel_weights", "image_weights", "text_taps", "visual_taps", "residual_taps"):
        assert getattr(paper, field) == getattr(code, field), field


def test_mode_defaults_can_be_overridden_and_survive_replace():
    """Explicit weights and taps win over the mode's; ``replace`` keeps explicit values."""
    config = Res2CLIPConfig.paper("fine_tuned", residual_taps=(-1,), pixel_weights=(0.1, 1.0, 1.0))
    assert config.residual_taps == (-1,)
    assert config.pixel_weights == (0.1, 1.0, 1.0)
    assert config.image_weights == (1.0, 1.0, 0.1)
    assert config.replace(gamma=0.02).pixel_weights == (0.1, 1.0, 1.0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize(
    ("old", "new"), [("training_free", "fine_tuned"), ("fine_tuned", "training_free")]
)
def test_replace_mode_resolves_the_mode_fields_again(preset, old, new):
    """``replace(mode=...)`` gives the new mode's fusion weights and residual taps.

    Before the fix, ``dataclasses.replace`` passed the old mode's resolved values on, so
    ``paper().replace(mode="fine_tuned")`` kept the training-free weights (0.1 : 1 : 1).
    """
    pixel, image, taps, _ = EXPECTED[new]
    config = PRESETS[preset](old, gamma=0.02).replace(mode=new)
    assert (config.pixel_weights, config.image_weights, config.residual_taps) == (
        pixel,
        image,
        taps,
    )
    assert config == PRESETS[preset](new, gamma=0.02)  # and every other field is kept
    # a config rebuilt from its dict (a checkpoint's) behaves the same
    stored = Res2CLIPConfig.from_dict(PRESETS[preset](old).to_dict())
    assert stored.replace(mode=new).pixel_weights == pixel


def test_replace_mode_keeps_explicit_fields_and_none_restores_the_default():
    config = Res2CLIPConfig.paper(pixel_weights=(1.0, 2.0, 3.0), residual_taps=(0, -1))
    ft = config.replace(mode="fine_tuned")
    assert ft.pixel_weights == (1.0, 2.0, 3.0)
    assert ft.residual_taps == (0, -1)
    assert ft.image_weights == EXPECTED["fine_tuned"][1]  # not given: re-resolved
    assert ft.replace(pixel_weights=None).pixel_weights == EXPECTED["fine_tuned"][0]
    # a value given in replace counts as explicit from then on
    back = ft.replace(image_weights=(2.0, 2.0, 2.0)).replace(mode="training_free")
    assert back.image_weights == (2.0, 2.0, 2.0)
    assert back.pixel_weights == (1.0, 2.0, 3.0)
    round_trip = Res2CLIPConfig.from_dict(ft.to_dict())
    assert round_trip == ft
    assert round_trip.replace(mode="training_free").pixel_weights == (1.0, 2.0, 3.0)
