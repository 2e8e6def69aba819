"""Tests of the learnable text prompts (resad_kit.clip.learnable_prompts; AF-CLIP Eq. 8)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resad_kit.clip import ClipBackbone, LearnablePrompts
from resad_kit.clip.learnable_prompts import POSITIONS, encode_with_context

AFCLIP = ("without defect.", "with defect.")


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=3)


def _reference(backbone, texts, ctx, position):
    """Eq. 8 assembled one prompt at a time: the prompt's own tokens (SOT … EOT, counted
    from the non-zero ids), the context spliced in, padding with the embedding of id 0 up to
    L, an explicit causal mask, the blocks one by one, and the feature of the prompt's last
    token (its EOT) — no argmax, no shift arithmetic, no open_clip encode_text."""
    model = backbone.model
    length = model.positional_embedding.shape[0]
    table = model.token_embedding.weight
    mask = torch.full((length, length), float("-inf")).triu(1)
    out = []
    for i, text in enumerate(texts):
        ids = backbone.tokenizer([text])[0]
        ids = ids[: int((ids != 0).sum())]
        emb = table[ids]
        c = ctx[i] if ctx.shape[0] > 1 else ctx[0]
        seq = torch.cat([c, emb]) if position == "before_sot" else torch.cat([emb[:1], c, emb[1:]])
        pad = table[0].expand(length - seq.shape[0], -1)
        x = torch.cat([seq, pad])[None] + model.positional_embedding
        for block in model.transformer.resblocks:
            x = block(x, attn_mask=mask)
        out.append(model.ln_final(x)[0, seq.shape[0] - 1] @ model.text_projection)
    return torch.stack(out)


@pytest.mark.parametrize("position", POSITIONS)
def test_zero_context_is_clips_encode_text(backbone, position):
    texts = ("a photo of a flawless object.", *AFCLIP)
    prompts = LearnablePrompts(backbone, texts, n_ctx=0, position=position)
    expected = backbone.encode_text(["a photo of a flawless object.", *AFCLIP])
    torch.testing.assert_close(prompts(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", POSITIONS)
def test_equals_a_direct_recomputation(backbone, position):
    torch.manual_seed(0)
    prompts = LearnablePrompts(backbone, AFCLIP, n_ctx=12, position=position, init_std=0.5)
    with torch.no_grad():
        expected = _reference(backbone, AFCLIP, prompts.ctx, position)
    torch.testing.assert_close(prompts(), expected, rtol=1e-4, atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(
    m=st.integers(0, 6),
    per_prompt=st.booleans(),
    position=st.sampled_from(POSITIONS),
    seed=st.integers(0, 2**16),
)
def test_function_equals_reference_for_any_context(backbone, m, per_prompt, position, seed):
    texts = ("with defect.", "a scratch on the surface of the metal nut.", "ok")
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(len(texts) if per_prompt else 1, m, 64, generator=g)
    tokens = backbone.tokenizer(list(texts))
    got = encode_with_context(backbone, tokens, ctx, position=position)
    with torch.no_grad():
        torch.testing.assert_close(
            got, _reference(backbone, texts, ctx, position), rtol=1e-4, atol=1e-5
        )


def test_eot_is_read_at_the_shifted_position(backbone):
    """M context tokens before <SOT> move the EOT from argmax(ids) to M + argmax(ids)."""
    model = backbone.model
    tokens = backbone.tokenizer(list(AFCLIP))
    assert tokens.argmax(-1).tolist() == [4, 4]  # SOT without defect . EOT
    ctx = torch.randn(1, 5, 64)
    x = torch.cat([ctx.expand(2, -1, -1), model.token_embedding(tokens)], dim=1)[:, :77]
    with torch.no_grad():
        hidden = model.ln_final(
            model.transformer(x + model.positional_embedding, attn_mask=model.attn_mask)
        )
        got = encode_with_context(backbone, tokens, ctx)
    torch.testing.assert_close(got, hidden[:, 4 + 5] @ model.text_projection)
    assert not torch.allclose(got, hidden[:, 4] @ model.text_projection, atol=1e-3)


def test_the_context_changes_the_embedding_in_both_positions(backbone):
    tokens = backbone.tokenizer(list(AFCLIP))
    a, b = torch.zeros(1, 3, 64), torch.randn(1, 3, 64)
    for position in POSITIONS:
        ea = encode_with_context(backbone, tokens, a, position=position)
        eb = encode_with_context(backbone, tokens, b, position=position)
        assert not torch.allclose(ea, eb, atol=1e-4), position


def test_per_prompt_context_equals_separate_encodings(backbone):
    tokens = backbone.tokenizer(list(AFCLIP))
    ctx = torch.randn(2, 4, 64)
    both = encode_with_context(backbone, tokens, ctx, position="after_sot")
    for i in range(2):
        one = encode_with_context(backbone, tokens[i : i + 1], ctx[i], position="after_sot")
        torch.testing.assert_close(both[i : i + 1], one, rtol=1e-5, atol=1e-6)


def test_gradients_reach_ctx_only(backbone):
    prompts = LearnablePrompts(backbone)
    t_n, t_a = prompts()
    (t_a - t_n).square().sum().backward()
    assert prompts.ctx.grad is not None
    assert bool(prompts.ctx.grad.abs().sum() > 0)
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert [name for name, _ in prompts.named_parameters()] == ["ctx"]


def test_state_holds_ctx_only_and_the_backbone_is_not_a_submodule(backbone):
    prompts = LearnablePrompts(backbone, n_ctx=7)
    assert list(prompts.state_dict()) == ["ctx"]
    assert list(prompts.children()) == []
    assert prompts.backbone is backbone
    assert prompts.tokens.shape == (2, 77)
    assert "n_ctx=7" in repr(prompts)
    assert "before_sot" in repr(prompts)


def test_defaults_are_afclips(backbone):
    prompts = LearnablePrompts(backbone)
    assert prompts.suffixes == AFCLIP
    assert (prompts.n_ctx, prompts.position, prompts.init_std) == (12, "before_sot", 0.01)
    assert prompts.ctx.shape == (1, 12, 64)
    assert LearnablePrompts(backbone, "with defect.").suffixes == ("with defect.",)


def test_init_is_normal_with_init_std(backbone):
    torch.manual_seed(0)
    ctx = LearnablePrompts(backbone, n_ctx=40, init_std=0.01).ctx.detach()  # 2,560 draws
    assert abs(float(ctx.mean())) < 0.001
    assert 0.009 < float(ctx.std()) < 0.011
    assert torch.equal(LearnablePrompts(backbone, init_std=0.0).ctx, torch.zeros(1, 12, 64))


# ---------------------------------------------------------------------------- converter


def test_converter_round_trip_through_a_saved_official_file(backbone, tmp_path):
    official = torch.nn.Parameter(torch.randn(1, 12, 64))  # what the official code saves
    path = tmp_path / "mvtec_prompt.pt"
    torch.save(official, path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    state = LearnablePrompts.convert_official_state_dict(loaded, n_ctx=12, width=64)
    prompts = LearnablePrompts(backbone)
    prompts.load_state_dict(state)  # strict
    assert torch.equal(prompts.ctx, official)
    with torch.no_grad():
        torch.testing.assert_close(prompts(), _reference(backbone, AFCLIP, official, "before_sot"))
    mapped = LearnablePrompts.convert_official_state_dict({"state_prompt_embedding": official})
    assert torch.equal(mapped["ctx"], official)
    assert not mapped["ctx"].requires_grad


def test_converter_errors(backbone):
    convert = LearnablePrompts.convert_official_state_dict
    good = torch.randn(1, 12, 64)
    with pytest.raises(ValueError, match=r"3 dimensions"):
        convert(good[0])
    with pytest.raises(ValueError, match=r"shape \(1, 12, 768\); got \(1, 12, 64\)"):
        convert(good, width=768)
    with pytest.raises(ValueError, match=r"shape \(1, 8, 64\)"):
        convert(good, n_ctx=8)
    with pytest.raises(ValueError, match=r"shape \(1, 12, 64\); got \(2, 12, 64\)"):
        convert(torch.randn(2, 12, 64))
    with pytest.raises(ValueError, match="state_prompt_embedding"):
        convert({"ctx": good})
    with pytest.raises(TypeError, match="official prompt tensor"):
        convert([[0.0]])
    with pytest.raises(ValueError, match="finite"):
        convert(torch.full((1, 12, 64), float("nan")))
    with pytest.raises(RuntimeError, match="size mismatch"):
        LearnablePrompts(backbone, n_ctx=8).load_state_dict(convert(good))


# ---------------------------------------------------------------------------- checks


def test_constructor_errors(backbone):
    with pytest.raises(ValueError, match="`position`"):
        LearnablePrompts(backbone, position="middle")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="`n_ctx`"):
            LearnablePrompts(backbone, n_ctx=bad)
    with pytest.raises(ValueError, match="`suffixes`"):
        LearnablePrompts(backbone, suffixes=[])
    with pytest.raises(ValueError, match="`suffixes`"):
        LearnablePrompts(backbone, suffixes=["ok", 3])
    with pytest.raises(ValueError, match="`init_std`"):
        LearnablePrompts(backbone, init_std=-0.1)
    with pytest.raises(ValueError, match="too long for n_ctx=12"):
        LearnablePrompts(backbone, suffixes=("word " * 70,))
    LearnablePrompts(backbone, suffixes=("word " * 60,), n_ctx=12)  # EOT at 61 + 12 < 77
    with pytest.raises(ValueError, match="text tower"):
        LearnablePrompts(torch.nn.Linear(2, 2))


def test_function_errors(backbone):
    tokens = backbone.tokenizer(list(AFCLIP))
    ctx = torch.zeros(1, 2, 64)
    with pytest.raises(ValueError, match="`position`"):
        encode_with_context(backbone, tokens, ctx, position="end")
    with pytest.raises(ValueError, match=r"`tokens` must be int64/int32 .* shape \(P, 77\)"):
        encode_with_context(backbone, tokens[:, :10], ctx)
    with pytest.raises(ValueError, match="`tokens` must be int64/int32"):
        encode_with_context(backbone, tokens.float(), ctx)
    with pytest.raises(ValueError, match=r"`ctx` must have shape \(M, 64\)"):
        encode_with_context(backbone, tokens, torch.zeros(1, 2, 32))
    with pytest.raises(ValueError, match=r"`ctx` must have shape"):
        encode_with_context(backbone, tokens, torch.zeros(3, 2, 64))  # P = 2
    with pytest.raises(ValueError, match="too long for M=80"):
        encode_with_context(backbone, tokens, torch.zeros(80, 64))
    with pytest.raises(TypeError, match="`ctx`"):
        encode_with_context(backbone, tokens, [0.0])
