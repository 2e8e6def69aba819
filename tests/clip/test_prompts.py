"""Prompt ensemble, text anchors and text residual (resad_kit.clip.prompts; App. B)."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from resad_kit.clip import ClipBackbone, TextAnchors, build_prompts, encode_prompt_ensemble
from resad_kit.clip.prompts import (
    ANOMALOUS_STATES,
    NORMAL_STATES,
    NOUN,
    TEMPLATES,
    PromptEnsemble,
)
from resad_kit.ops import text_residual

# App. B.4 of the paper, typed out independently of the library.
PAPER_TEMPLATES = [
    "a photo of a {}.", "a photo of the {}.", "a cropped photo of a {}.",
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "the {} in the image.", "the {} in the scene.", "an image of a {}.", "an image of the {}.",
    "a rendering of a {}.", "a photo of one {}.", "showing the {}.", "showing a {}.",
    "itap of a {}.",
]  # fmt: skip


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=0)


def test_word_lists_are_the_papers():
    assert list(TEMPLATES) == PAPER_TEMPLATES
    assert NORMAL_STATES == ("", "perfect", "flawless", "clean", "undamaged")
    assert ANOMALOUS_STATES == ("damaged",)
    assert NOUN == "object"


def test_prompt_sets_sizes_and_contents():
    sets = build_prompts()
    assert len(sets.normal) == 75
    assert len(set(sets.normal)) == 75
    assert len(sets.anomalous) == 15  # eq. 31: 1 × 15
    assert sets.normal[:15] == tuple(t.format("object") for t in PAPER_TEMPLATES)
    assert "a photo of a flawless object." in sets.normal
    assert "itap of a undamaged object." in sets.normal
    assert set(sets.anomalous) == {t.format("damaged object") for t in PAPER_TEMPLATES}
    official = build_prompts(extra_anomaly_phrase=True)
    assert official.normal == sets.normal
    assert official.anomalous[:15] == sets.anomalous
    assert official.anomalous[15:] == tuple(
        t.format("object with damaged") for t in PAPER_TEMPLATES
    )
    assert build_prompts("hazelnut").anomalous[0] == "a photo of a damaged hazelnut."


def test_noun_only_phrase_tokenises_like_the_official_leading_space():
    tokenizer = open_clip.SimpleTokenizer()
    assert torch.equal(tokenizer(["a photo of a  object."]), tokenizer(["a photo of a object."]))


def test_build_prompts_errors():
    with pytest.raises(ValueError, match="`class_name` must be a non-empty str"):
        build_prompts("  ")


def test_encode_text_is_open_clips_text_encoder(backbone):
    prompts = list(build_prompts().anomalous[:4])
    tokens = open_clip.SimpleTokenizer()(prompts)
    expected = backbone.model.encode_text(tokens)
    torch.testing.assert_close(backbone.encode_text(prompts), expected, rtol=1e-6, atol=1e-6)
    assert backbone.encode_text(prompts[0]).shape == (1, 32)
    with pytest.raises(ValueError, match="non-empty sequence of str"):
        backbone.encode_text([])
    with pytest.raises(ValueError, match="`batch_size` must be None or a positive int"):
        backbone.encode_text(prompts, batch_size=0)


def _anchors_by_hand(backbone, *, extra=False, normalize_each=False):
    sets = build_prompts(extra_anomaly_phrase=extra)
    normal, anomalous = backbone.encode_text(sets.normal), backbone.encode_text(sets.anomalous)
    if normalize_each:
        normal, anomalous = F.normalize(normal, dim=-1), F.normalize(anomalous, dim=-1)
    return F.normalize(normal.mean(0), dim=0), F.normalize(anomalous.mean(0), dim=0)


@pytest.mark.parametrize("normalize_before_mean", [False, True])
@pytest.mark.parametrize("extra_anomaly_phrase", [False, True])
def test_anchors_match_eq_32_by_hand(backbone, normalize_before_mean, extra_anomaly_phrase):
    anchors = encode_prompt_ensemble(
        backbone,
        extra_anomaly_phrase=extra_anomaly_phrase,
        normalize_before_mean=normalize_before_mean,
    )
    normal, anomalous = _anchors_by_hand(
        backbone, extra=extra_anomaly_phrase, normalize_each=normalize_before_mean
    )
    assert isinstance(anchors, TextAnchors)
    torch.testing.assert_close(anchors.normal, normal, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(anchors.anomalous, anomalous, rtol=1e-5, atol=1e-6)
    assert all(t.dtype == torch.float32 and t.shape == (32,) for t in anchors)
    for unit_vector in anchors[:2]:
        torch.testing.assert_close(unit_vector.norm(), torch.tensor(1.0))
    assert torch.equal(anchors.residual, text_residual(anchors.anomalous, anchors.normal))


def test_the_paper_and_code_flags_change_the_anchors(backbone):
    paper = encode_prompt_ensemble(backbone)
    assert not torch.allclose(
        paper.anomalous, encode_prompt_ensemble(backbone, extra_anomaly_phrase=True).anomalous
    )
    assert not torch.allclose(
        paper.normal, encode_prompt_ensemble(backbone, normalize_before_mean=True).normal
    )


def test_unit_residual_is_the_normalised_residual(backbone):
    raw = encode_prompt_ensemble(backbone).residual
    unit = encode_prompt_ensemble(backbone, unit_residual=True).residual
    torch.testing.assert_close(unit, raw / raw.norm())


def test_cached_per_class_name(backbone, monkeypatch):
    calls = []
    encode = backbone.encode_text

    def counting(prompts, **kwargs):
        calls.append(len(prompts))
        return encode(prompts, **kwargs)

    monkeypatch.setattr(backbone, "encode_text", counting)
    first = encode_prompt_ensemble(backbone, "screw")
    second = encode_prompt_ensemble(backbone, "screw")
    assert calls == [90]  # 75 normal + 15 anomalous prompts, encoded once
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    first.residual.zero_()  # callers get copies: the cache is not changed
    assert float(encode_prompt_ensemble(backbone, "screw").residual.norm()) > 0
    other = encode_prompt_ensemble(backbone, "bottle")
    assert calls == [90, 90]
    assert not torch.allclose(other.normal, second.normal)


def _fresh(backbone: ClipBackbone) -> ClipBackbone:
    """A new wrapper (empty cache) over the same frozen model."""
    return ClipBackbone(backbone.model, backbone.config)


def test_deterministic_and_unchanged_by_batching(backbone):
    a = encode_prompt_ensemble(_fresh(backbone))
    b = encode_prompt_ensemble(_fresh(backbone))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    batched = encode_prompt_ensemble(_fresh(backbone), batch_size=7)
    torch.testing.assert_close(batched.residual, a.residual, rtol=1e-5, atol=1e-6)
    cosine = F.cosine_similarity(batched.residual, a.residual, dim=0)
    assert float(cosine) > 1 - 1e-6


def test_text_runs_in_float32_under_autocast(backbone):
    plain = encode_prompt_ensemble(_fresh(backbone))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = encode_prompt_ensemble(_fresh(backbone))
    assert all(torch.equal(x, y) for x, y in zip(plain, autocast, strict=True))


# --------------------------------------------------------------------------- WinCLIP lists

# anomalib.models.image.winclip.prompting, typed out independently of the library.
ANOMALIB_NORMAL = [
    "{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw",
    "{} without defect", "{} without damage",
]  # fmt: skip
ANOMALIB_ANOMALOUS = ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"]
ANOMALIB_TEMPLATES = [
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.",
    "a dark photo of a {}.", "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
    "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.",
    "a photo of a small {}.", "a photo of the small {}.", "a photo of a large {}.",
    "a photo of the large {}.", "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.", "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
]  # fmt: skip


def test_winclip_ensemble_is_anomalibs_create_prompt_ensemble():
    sets = PromptEnsemble.winclip().build("transistor")
    # anomalib: [template.format(state.format(c)) for state in STATES for template in TEMPLATES]
    normal = [t.format(s.format("transistor")) for s in ANOMALIB_NORMAL for t in ANOMALIB_TEMPLATES]
    anomalous = [
        t.format(s.format("transistor")) for s in ANOMALIB_ANOMALOUS for t in ANOMALIB_TEMPLATES
    ]
    assert list(sets.normal) == normal
    assert list(sets.anomalous) == anomalous
    assert (len(sets.normal), len(sets.anomalous)) == (147, 84)
    assert sets.normal.count("a jpeg corrupted photo of the transistor.") == 2  # kept as is
    assert build_prompts("transistor", ensemble=PromptEnsemble.winclip()) == sets


def test_res2clip_ensemble_is_build_prompts():
    for extra in (False, True):
        assert PromptEnsemble.res2clip(extra_anomaly_phrase=extra).build("x") == build_prompts(
            "x", extra_anomaly_phrase=extra
        )


def test_prompt_ensemble_errors():
    with pytest.raises(ValueError, match="`templates` must be a non-empty sequence"):
        PromptEnsemble((), ("{}",), ("bad {}",))
    with pytest.raises(ValueError, match=r"`normal_states` must be .* exactly one"):
        PromptEnsemble(("a {}.",), ("no placeholder",), ("bad {}",))
    with pytest.raises(ValueError, match="`anomalous_states`"):
        PromptEnsemble(("a {}.",), ("{}",), ("{} {}",))
    with pytest.raises(ValueError, match="`extra_anomaly_phrase` is Res²CLIP's option"):
        build_prompts(ensemble=PromptEnsemble.winclip(), extra_anomaly_phrase=True)


def test_winclip_anchors_are_the_normalised_raw_means(backbone):
    ensemble = PromptEnsemble.winclip()
    anchors = encode_prompt_ensemble(_fresh(backbone), "bottle", ensemble=ensemble)
    sets = ensemble.build("bottle")
    normal = F.normalize(backbone.encode_text(sets.normal).mean(0), dim=0)
    anomalous = F.normalize(backbone.encode_text(sets.anomalous).mean(0), dim=0)
    torch.testing.assert_close(anchors.normal, normal, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(anchors.anomalous, anomalous, rtol=1e-5, atol=1e-6)


def test_the_cache_tells_ensembles_apart(backbone):
    fresh = _fresh(backbone)
    res2clip = encode_prompt_ensemble(fresh, "bottle")
    winclip = encode_prompt_ensemble(fresh, "bottle", ensemble=PromptEnsemble.winclip())
    assert not torch.allclose(res2clip.normal, winclip.normal)
    again = encode_prompt_ensemble(fresh, "bottle", ensemble=PromptEnsemble.res2clip())
    assert torch.allclose(again.normal, res2clip.normal, atol=1e-6)
