"""Attr-MoE gates of the MLLP prompts (FineGrainedAD §3.3): a direct composition as reference.

The reference builds every prompt as the released code does (placeholder words
``"N N N N [A] <text>."`` whose embeddings are overwritten by the contexts), adds the
sigmoid-gated attribute sequences, ranks the attribute AHPs by the mean of their whole
sequence *with* the context (the code's ``topk``), runs the text blocks one by one with an
explicit causal mask and reads the feature at the group prompt's own EOT.
"""

from __future__ import annotations

import pytest
import torch

from resad_kit.clip import ClipBackbone
from resad_kit.clip.mfsc import load_captions, load_vocabularies, mfsc_prompts
from resad_kit.clip.mfsc_attributes import AttributePrompts, attribute_prompts
from resad_kit.clip.mllp import MultiLevelPrompts


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=5)


def _sequence(backbone, text, normal_ctx, abnormal_ctx=None):
    """The code's embedding sequence of ``"N N N N [A] <text>."`` and its EOT index."""
    model = backbone.model
    n = normal_ctx.shape[1]
    words = ["N"] * n + (["A"] * abnormal_ctx.shape[0] if abnormal_ctx is not None else [])
    ids = backbone.tokenizer([" ".join(words) + " " + text + "."])[0]
    emb = model.token_embedding.weight[ids].clone()
    emb[1 : 1 + n] = normal_ctx[0]
    if abnormal_ctx is not None:
        emb[1 + n : 1 + n + abnormal_ctx.shape[0]] = abnormal_ctx
    return emb, int(ids.argmax())


def _encode(backbone, emb, eot):
    model = backbone.model
    length = emb.shape[0]
    mask = torch.full((length, length), float("-inf")).triu(1)
    x = (emb + model.positional_embedding)[None]
    for block in model.transformer.resblocks:
        x = block(x, attn_mask=mask)
    return model.ln_final(x)[0, eot] @ model.text_projection


def _reference(backbone, mllp, group, attrs, gates):
    """(normal (1, D), handcrafted (k, D), learned (N_ab, D)) of one gated group."""
    nctx, actx = mllp.normal_ctx, mllp.abnormal_ctx
    s_n, s_a = torch.sigmoid(gates[0]), torch.sigmoid(gates[1])
    emb, eot = _sequence(backbone, group.normal, nctx)
    for w, text in zip(s_n, attrs.normal, strict=True):
        emb = emb + w * _sequence(backbone, text, nctx)[0]
    normal = _encode(backbone, emb, eot)[None]
    k = len(group.abnormal)
    picked = []  # per attribute: its AHPs ranked by the mean of the whole sequence, top k
    for texts in attrs.abnormal:
        seqs = [_sequence(backbone, t, nctx)[0] for t in texts]
        order = sorted(range(len(seqs)), key=lambda j: -float(seqs[j].mean()))
        picked.append([seqs[j] for j in order[:k]])
    hand = []
    for i, text in enumerate(group.abnormal):
        emb, eot = _sequence(backbone, text, nctx)
        for w, seqs in zip(s_a, picked, strict=True):
            emb = emb + w * seqs[i]
        hand.append(_encode(backbone, emb, eot))
    learned = []
    for i in range(mllp.n_abnormal):
        emb, eot = _sequence(backbone, group.learned, nctx, actx[i])
        for w, text in zip(s_a, attrs.normal, strict=True):
            emb = emb + w * _sequence(backbone, text, nctx, actx[i])[0]
        learned.append(_encode(backbone, emb, eot))
    return normal, torch.stack(hand), torch.stack(learned)


@pytest.mark.parametrize(("category", "level"), [("screw", "image"), ("cable", "components")])
def test_gated_features_equal_the_direct_composition(backbone, category, level):
    caps, vocab = load_captions(category), load_vocabularies()
    groups = mfsc_prompts(caps, vocab, seed=1)
    attrs = attribute_prompts(caps, vocab, level)
    torch.manual_seed(0)
    mllp = MultiLevelPrompts(backbone, groups, init_std=0.3, attributes=attrs)
    plain = MultiLevelPrompts(backbone, groups, init_std=0.3)
    plain.load_state_dict({k: v for k, v in mllp.state_dict().items() if "gates" not in k})
    with torch.no_grad():
        for gate in mllp.attr_gates:  # non-identity, distinct gates
            gate.copy_(torch.randn_like(gate) * 2)
        feats, base = mllp(), plain()
        gated = {a.group for a in attrs}
        assert gated == ({len(caps.entities)} if level == "image" else set(range(len(gated))))
        for i, a in enumerate(attrs):
            want = _reference(backbone, mllp, groups[a.group], a, mllp.attr_gates[i])
            for got, ref in zip(feats[a.group], want, strict=True):
                torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        for g in set(range(len(groups))) - gated:  # the other groups are untouched
            for got, ref in zip(feats[g], base[g], strict=True):
                torch.testing.assert_close(got, ref)


def test_gates_learn_and_are_in_the_state_dict(backbone):
    caps, vocab = load_captions("screw"), load_vocabularies()
    attrs = attribute_prompts(caps, vocab, "image")
    mllp = MultiLevelPrompts(backbone, mfsc_prompts(caps, vocab), attributes=attrs)
    assert sorted(mllp.state_dict()) == ["abnormal_ctx", "attr_gates.0", "normal_ctx"]
    assert tuple(mllp.attr_gates[0].shape) == (2, 4)  # normal / abnormal × 4 attributes
    feats = mllp()
    torch.stack([f.normal.sum() for f in feats]).sum().backward()
    grad = mllp.attr_gates[0].grad
    assert float(grad[0].abs().min()) > 0  # NHPs: the normal row
    assert float(grad[1].abs().max()) == 0
    mllp.zero_grad()
    torch.stack([f.learned.sum() + f.handcrafted.sum() for f in mllp()]).sum().backward()
    grad = mllp.attr_gates[0].grad
    assert float(grad[1].abs().min()) > 0  # AHPs and ALPs: the abnormal row
    assert float(grad[0].abs().max()) == 0
    assert all(p.grad is None for p in backbone.model.parameters())


def test_attribute_texts():
    caps, vocab = load_captions("screw"), load_vocabularies()
    (image,) = attribute_prompts(caps, vocab, "image")
    assert image.group == len(caps.entities)
    assert image.names == ("relation", "color", "texture", "shape")
    colors = tuple(dict.fromkeys(c for e in caps.entities for c in e.color))
    assert image.normal[0] == caps.relation
    assert image.normal[1] == ".".join(colors)
    assert image.abnormal[1] == tuple(c for c in vocab.colors if c not in colors)
    first = caps.abnormal_states[0]
    want = caps.relation
    for e in caps.entities:
        want = want.replace(e.name, first.format(e.name))
    assert image.abnormal[0][0] == want
    assert len(image.abnormal[0]) == len(caps.abnormal_states)
    comps = attribute_prompts(caps, vocab, "components")
    assert [c.group for c in comps] == list(range(len(caps.entities)))
    for c, e in zip(comps, caps.entities, strict=True):
        assert c.normal == (".".join(e.color), ".".join(e.texture), ".".join(e.shape))
        assert c.abnormal[2] == tuple(s for s in vocab.shapes if s not in e.shape)
    assert attribute_prompts(caps, vocab, "none") == ()
    with pytest.raises(ValueError, match="level"):
        attribute_prompts(caps, vocab, "foreground")


def test_errors(backbone):
    caps, vocab = load_captions("screw"), load_vocabularies()
    groups = mfsc_prompts(caps, vocab)
    good = attribute_prompts(caps, vocab, "image")[0]
    with pytest.raises(ValueError, match="distinct groups"):
        MultiLevelPrompts(backbone, groups, attributes=[good, good])
    with pytest.raises(ValueError, match="distinct groups"):
        MultiLevelPrompts(backbone, groups, attributes=[AttributePrompts(9, (), (), ())])
    few = AttributePrompts(good.group, ("color",), ("silver",), (("black",),))
    with pytest.raises(ValueError, match="AHPs"):
        MultiLevelPrompts(backbone, groups, attributes=[few])
    long = AttributePrompts(good.group, ("color",), ("silver " * 80,), (good.abnormal[1],))
    with pytest.raises(ValueError, match="too long"):
        MultiLevelPrompts(backbone, groups, attributes=[long])
