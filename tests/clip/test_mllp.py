"""MLLP prompts (FineGrainedAD §3.3): the released code's placeholder construction as reference."""

from __future__ import annotations

import pytest
import torch

from resad_kit.clip import ClipBackbone
from resad_kit.clip.mfsc import PromptGroup, load_captions, load_vocabularies, mfsc_prompts
from resad_kit.clip.mllp import GroupPromptFeatures, MultiLevelPrompts, group_anchors


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=5)


def _placeholder_reference(backbone, text, normal_ctx, abnormal_ctx=None):
    """Tokenise ``"N N N N [A] <text>."``, overwrite the placeholder embeddings with the
    contexts, run the blocks one by one with an explicit causal mask, read the EOT."""
    model = backbone.model
    n = normal_ctx.shape[1]
    words = ["N"] * n + (["A"] * abnormal_ctx.shape[0] if abnormal_ctx is not None else [])
    ids = backbone.tokenizer([" ".join(words) + " " + text + "."])[0]
    assert int((ids != 0).sum()) == len(backbone.tokenizer([text + "."])[0].nonzero()) + len(words)
    emb = model.token_embedding.weight[ids].clone()
    emb[1 : 1 + n] = normal_ctx[0]
    if abnormal_ctx is not None:
        emb[1 + n : 1 + n + abnormal_ctx.shape[0]] = abnormal_ctx
    length = emb.shape[0]
    mask = torch.full((length, length), float("-inf")).triu(1)
    x = (emb + model.positional_embedding)[None]
    for block in model.transformer.resblocks:
        x = block(x, attn_mask=mask)
    return model.ln_final(x)[0, int(ids.argmax())] @ model.text_projection


def test_features_equal_the_code_placeholder_construction(backbone):
    groups = mfsc_prompts(load_captions("cable"), load_vocabularies(), seed=1)
    torch.manual_seed(0)
    mllp = MultiLevelPrompts(backbone, groups, init_std=0.3)
    feats = mllp()
    with torch.no_grad():
        for g, f in zip(groups, feats, strict=True):
            want_n = _placeholder_reference(backbone, g.normal, mllp.normal_ctx)
            torch.testing.assert_close(f.normal[0], want_n, rtol=1e-4, atol=1e-5)
            for text, got in zip(g.abnormal, f.handcrafted, strict=True):
                want = _placeholder_reference(backbone, text, mllp.normal_ctx)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            for i in range(mllp.n_abnormal):
                want = _placeholder_reference(
                    backbone, g.learned, mllp.normal_ctx, mllp.abnormal_ctx[i]
                )
                torch.testing.assert_close(f.learned[i], want, rtol=1e-4, atol=1e-5)


def test_counts_follow_the_groups(backbone):
    caps = load_captions("pill")
    groups = mfsc_prompts(caps, load_vocabularies())
    feats = MultiLevelPrompts(backbone, groups, n_abnormal=3)()
    assert len(feats) == len(caps.entities) + 2
    for g, f in zip(groups, feats, strict=True):
        assert f.normal.shape[0] == 1
        assert f.handcrafted.shape[0] == len(g.abnormal)
        assert f.learned.shape[0] == 3


def test_gradients_reach_the_two_contexts_only(backbone):
    groups = mfsc_prompts(load_captions("bottle"), load_vocabularies())
    mllp = MultiLevelPrompts(backbone, groups)
    feats = mllp()
    # normal and hand-written abnormal prompts do not see the abnormal tokens
    torch.stack([f.normal.sum() + f.handcrafted.sum() for f in feats]).sum().backward()
    assert mllp.abnormal_ctx.grad is None
    assert float(mllp.normal_ctx.grad.abs().max()) > 0
    mllp.zero_grad()
    torch.stack([f.learned.sum() for f in mllp()]).sum().backward()
    assert float(mllp.abnormal_ctx.grad.abs().max()) > 0
    assert all(p.grad is None for p in backbone.model.parameters())
    assert sorted(mllp.state_dict()) == ["abnormal_ctx", "normal_ctx"]


def test_group_anchors_are_unit_means():
    f = GroupPromptFeatures(
        torch.tensor([[3.0, 4.0], [3.0, 4.0]]),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[3.0, 0.0]]),
    )
    normal, abnormal = group_anchors([f, f])
    torch.testing.assert_close(normal, torch.tensor([[0.6, 0.8], [0.6, 0.8]]))
    torch.testing.assert_close(abnormal, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))


def test_errors(backbone):
    group = PromptGroup("image", "a cup", ("a damaged cup",), "a cup")
    with pytest.raises(ValueError, match="groups"):
        MultiLevelPrompts(backbone, [])
    with pytest.raises(ValueError, match="n_abnormal"):
        MultiLevelPrompts(backbone, [group], n_abnormal=0)
    with pytest.raises(ValueError, match="n_ctx"):
        MultiLevelPrompts(backbone, [group], n_ctx=0)
    long = PromptGroup("image", "a cup " * 40, ("a damaged cup",), "a cup")
    with pytest.raises(ValueError, match="too long"):
        MultiLevelPrompts(backbone, [long])
