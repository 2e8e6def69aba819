"""QueryFormer (FineGrainedAD §3.4): naive per-head loop reference, presets, gradients, loss."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from resad_kit.nn import QueryFormer, QueryFormerConfig, query_cross_attention, query_former_loss


def naive_attention(query, context, q_proj, kv_proj, out_proj, heads, scope):
    """Head by head, query by query, with an explicit softmax over the allowed keys."""
    g, d = query.shape
    dh = d // heads
    q = q_proj(query)
    kv = kv_proj(context)
    k, v = kv[:, :d], kv[:, d:]
    rows = []
    for gi in range(g):
        parts = []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            keys = [gi] if scope == "own" else list(range(g))
            logits = [float((q[gi, sl] @ k[j, sl]).detach()) / math.sqrt(dh) for j in keys]
            top = max(logits)
            w = [math.exp(x - top) for x in logits]
            w = [x / sum(w) for x in w]
            parts.append(sum(wj * v[j, sl] for wj, j in zip(w, keys, strict=True)))
        rows.append(torch.cat(parts))
    return out_proj(torch.stack(rows))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 5),
    st.sampled_from([(1, 4), (2, 8), (4, 8)]),
    st.sampled_from(["own", "all"]),
    st.integers(0, 999),
)
def test_cross_attention_equals_naive_loop(g, heads_dim, scope, seed):
    heads, d = heads_dim
    torch.manual_seed(seed)
    q_proj, kv_proj, out_proj = (
        nn.Linear(d, d).double(),
        nn.Linear(d, 2 * d).double(),
        nn.Linear(d, d).double(),
    )
    query, context = torch.randn(g, d, dtype=torch.float64), torch.randn(g, d, dtype=torch.float64)
    got = query_cross_attention(
        query, context, q_proj, kv_proj, out_proj, num_heads=heads, scope=scope
    )
    want = naive_attention(query, context, q_proj, kv_proj, out_proj, heads, scope)
    torch.testing.assert_close(got, want)


def test_module_equals_composition():
    torch.manual_seed(0)
    qf = QueryFormer(3, 8, QueryFormerConfig(num_heads=2, scope="all")).double()
    pn, pa = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    h_n = naive_attention(qf.queries, pn, qf.q_normal, qf.kv_normal, qf.out_normal, 2, "all")
    h_a = naive_attention(qf.queries, pa, qf.q_abnormal, qf.kv_abnormal, qf.out_abnormal, 2, "all")
    torch.testing.assert_close(qf(pn, pa), qf.fuse(torch.cat([h_n, h_a], -1)))


def test_official_code_output_does_not_depend_on_the_queries():
    """Released code: one key per query, softmax = 1, the queries drop out."""
    torch.manual_seed(0)
    qf = QueryFormer(4, 16, QueryFormerConfig.official_code())
    pn, pa = torch.randn(4, 16), torch.randn(4, 16)
    before = qf(pn, pa)
    with torch.no_grad():
        qf.queries.normal_()
    torch.testing.assert_close(qf(pn, pa), before)
    value = qf.fuse(
        torch.cat(
            [qf.out_normal(qf.kv_normal(pn)[:, 16:]), qf.out_abnormal(qf.kv_abnormal(pa)[:, 16:])],
            -1,
        )
    )
    torch.testing.assert_close(before, value)
    qf(pn, pa).sum().backward()
    assert float(qf.queries.grad.abs().max()) == 0.0


def test_paper_gradients_reach_every_parameter_not_the_prompts():
    torch.manual_seed(0)
    qf = QueryFormer(4, 16, QueryFormerConfig.paper())
    pn = torch.randn(4, 16, requires_grad=True)
    pa = torch.randn(4, 16, requires_grad=True)
    query_former_loss(qf(pn, pa), pn, pa).backward()
    for name, p in qf.named_parameters():
        assert p.grad is not None, name
        assert float(p.grad.abs().max()) > 0, name
    # the loss detaches its targets: prompts get gradient only through the module's input
    assert pn.grad is not None


def test_loss_detaches_the_prompt_features():
    q = torch.randn(3, 5, requires_grad=True)
    pn = torch.randn(3, 5, requires_grad=True)
    pa = torch.randn(3, 5, requires_grad=True)
    query_former_loss(q, pn, pa).backward()
    assert pn.grad is None
    assert pa.grad is None
    assert q.grad is not None


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(2, 6), st.integers(0, 999))
def test_loss_equals_naive_sum_and_bounds(g, d, seed):
    gen = torch.Generator().manual_seed(seed)
    q, pn, pa = (torch.randn(g, d, generator=gen, dtype=torch.float64) for _ in range(3))
    want = 0.0
    for i in range(g):
        for p in (pn[i], pa[i]):
            want += 1.0 - float(q[i] @ p) / (float(q[i].norm()) * float(p.norm()))
    got = query_former_loss(q, pn, pa)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert 0.0 <= got.item() <= 4 * g + 1e-9


def test_gradcheck_float64():
    torch.manual_seed(0)
    qf = QueryFormer(3, 4, QueryFormerConfig(num_heads=2, scope="all")).double()
    pn = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    pa = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: qf(a, b), (pn, pa))


def test_presets_and_config_errors():
    assert QueryFormerConfig.official_code() == QueryFormerConfig(8, "own", False)
    assert QueryFormerConfig.paper() == QueryFormerConfig(8, "all", True)
    with pytest.raises(ValueError, match="scope"):
        QueryFormerConfig(scope="none")
    with pytest.raises(ValueError, match="num_heads"):
        QueryFormerConfig(num_heads=0)
    with pytest.raises(ValueError, match="loss"):
        QueryFormerConfig(loss=1)
    with pytest.raises(ValueError, match="divide"):
        QueryFormer(3, 10)
    with pytest.raises(ValueError, match="normal"):
        QueryFormer(3, 8)(torch.randn(2, 8), torch.randn(2, 8))
    lin = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="context"):
        query_cross_attention(
            torch.randn(2, 4),
            torch.randn(3, 4),
            lin,
            nn.Linear(4, 8),
            lin,
            num_heads=1,
            scope="all",
        )
    with pytest.raises(ValueError, match="`normal`"):
        query_former_loss(torch.randn(2, 4), torch.randn(3, 4), torch.randn(2, 4))
