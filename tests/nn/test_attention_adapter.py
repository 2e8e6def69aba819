"""Tests of AF-CLIP's attention adapter (resad_kit.nn.attention_adapter; paper Eqs. 3–4)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import resad_kit
from resad_kit.nn import AttentionAdapter, self_attention_adapter

FLOAT_DTYPES = [torch.float32, torch.float64]

# The official Adaptor's state-dict keys (Faustinaqq/AF-CLIP, clip/adaptor.py), written out.
OFFICIAL = (
    "attention.norm.weight",
    "attention.norm.bias",
    "attention.attn.to_q.weight",
    "attention.attn.to_k.weight",
    "attention.attn.to_v.weight",
    "attention.attn.to_out.0.weight",
    "attention.attn.to_out.0.bias",
)


def _naive(x: torch.Tensor, p: dict[str, torch.Tensor], heads: int, eps: float = 1e-5):
    """Eqs. 3–4 with an explicit LayerNorm, a loop over heads and an explicit softmax.

    ``p`` uses the official key names; ``x`` is ``(B, T, D)``.
    """
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    xn = (x - mean) / torch.sqrt(var + eps) * p["attention.norm.weight"]
    xn = xn + p["attention.norm.bias"]
    q = xn @ p["attention.attn.to_q.weight"].T
    k = xn @ p["attention.attn.to_k.weight"].T
    v = xn @ p["attention.attn.to_v.weight"].T
    e = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        sl = slice(h * e, (h + 1) * e)
        logits = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(e)
        weights = torch.exp(logits - logits.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        outs.append(weights @ v[..., sl])
    out = torch.cat(outs, dim=-1)
    return out @ p["attention.attn.to_out.0.weight"].T + p["attention.attn.to_out.0.bias"]


def _official(d: int, i: int, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A random state dict in the official key layout (non-trivial LayerNorm affine too)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "attention.norm.weight": (d,),
        "attention.norm.bias": (d,),
        "attention.attn.to_q.weight": (i, d),
        "attention.attn.to_k.weight": (i, d),
        "attention.attn.to_v.weight": (i, d),
        "attention.attn.to_out.0.weight": (d, i),
        "attention.attn.to_out.0.bias": (d,),
    }
    out = {
        k: torch.randn(s, generator=g, dtype=torch.float64) / math.sqrt(s[-1])
        for k, s in shapes.items()
    }
    out["attention.norm.weight"] = 1 + 0.3 * out["attention.norm.weight"]
    return {k: v.to(dtype) for k, v in out.items()}


def _adapter(d: int, i: int, heads: int, seed: int = 0, dtype=torch.float32) -> AttentionAdapter:
    adapter = AttentionAdapter(d, i, heads).to(dtype)
    official = _official(d, i, seed, dtype)
    adapter.load_state_dict(AttentionAdapter.convert_official_state_dict(official))
    return adapter


class _OfficialLayout(nn.Module):
    """A module with the official Adaptor's nesting (written for this test, no maths)."""

    def __init__(self, d: int, i: int) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.norm = nn.LayerNorm(d)
        self.attention.attn = nn.Module()
        self.attention.attn.to_q = nn.Linear(d, i, bias=False)
        self.attention.attn.to_k = nn.Linear(d, i, bias=False)
        self.attention.attn.to_v = nn.Linear(d, i, bias=False)
        self.attention.attn.to_out = nn.Sequential(nn.Linear(i, d), nn.Dropout(0.0))


# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("d", "i", "heads"), [(16, 8, 2), (12, 12, 3), (8, 4, 1)])
def test_equals_naive_per_head_loop(dtype, d, i, heads):
    official = _official(d, i, seed=d + heads, dtype=dtype)
    adapter = _adapter(d, i, heads, seed=d + heads, dtype=dtype)
    x = torch.randn(3, 7, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x.to(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(adapter(x), _naive(x, official, heads), **tol)


def test_function_equals_module_and_any_leading_dims():
    adapter = _adapter(16, 8, 4, dtype=torch.float64)
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64)  # (views, B, T, D)
    weights = (
        adapter.norm.weight, adapter.norm.bias, adapter.to_q.weight, adapter.to_k.weight,
        adapter.to_v.weight, adapter.to_out.weight, adapter.to_out.bias,
    )  # fmt: skip
    out = self_attention_adapter(x, *weights, heads=4)
    torch.testing.assert_close(out, adapter(x), rtol=0, atol=0)
    # Leading dims are independent batches; a single (T, D) view works too.
    for v in range(2):
        torch.testing.assert_close(adapter(x[v]), out[v], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(adapter(x[0, 1]), out[0, 1], rtol=1e-12, atol=1e-12)


def test_default_is_vit_l_and_has_2_100_224_parameters():
    adapter = AttentionAdapter()
    assert (adapter.dim, adapter.inner_dim, adapter.heads) == (1024, 512, 8)
    assert sum(p.numel() for p in adapter.parameters()) == 2_100_224
    # LN 2·1024 + W_Q, W_K, W_V 3·512·1024 + W_O 512·1024 + b_O 1024
    assert 2 * 1024 + 4 * 512 * 1024 + 1024 == 2_100_224
    assert [m.bias for m in (adapter.to_q, adapter.to_k, adapter.to_v)] == [None] * 3
    assert adapter.to_out.bias is not None
    assert "residual=False" in repr(adapter)


@pytest.mark.parametrize(("d", "i"), [(7, 4), (32, 16), (64, 64)])
def test_parameter_count_formula(d, i):
    assert sum(p.numel() for p in AttentionAdapter(d, i, 2).parameters()) == 3 * d + 4 * i * d


def test_no_residual_zero_output_projection_gives_zeros_and_the_bias():
    adapter = _adapter(16, 8, 2)
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        adapter.to_out.weight.zero_()
        adapter.to_out.bias.zero_()
    assert torch.equal(adapter(x), torch.zeros_like(x))  # a residual would give x
    bias = torch.arange(16.0)
    with torch.no_grad():
        adapter.to_out.bias.copy_(bias)
    assert torch.equal(adapter(x), bias.expand_as(x))


def test_no_mlp_output_lies_in_the_span_of_w_o():
    """ã = (...)·W_Oᵀ + b_O: with a rank-1 W_O every output minus b_O is parallel to it."""
    adapter = _adapter(16, 8, 2, dtype=torch.float64)
    u = torch.randn(16, dtype=torch.float64)
    with torch.no_grad():
        adapter.to_out.weight.copy_(torch.outer(u, torch.randn(8, dtype=torch.float64)))
    out = adapter(torch.randn(3, 5, 16, dtype=torch.float64)) - adapter.to_out.bias
    cross = out[..., :, None] * u[None, :] - out[..., None, :] * u[:, None]
    torch.testing.assert_close(cross, torch.zeros_like(cross), rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(t=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_permutation_equivariant_over_tokens(t, seed):
    """No positional information: permuting the tokens permutes the output."""
    g = torch.Generator().manual_seed(seed)
    adapter = _adapter(8, 4, 2, seed=seed % 7, dtype=torch.float64)
    x = torch.randn(2, t, 8, generator=g, dtype=torch.float64)
    perm = torch.randperm(t, generator=g)
    torch.testing.assert_close(adapter(x[:, perm]), adapter(x)[:, perm], rtol=1e-10, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.1, 10.0), shift=st.floats(-5.0, 5.0), seed=st.integers(0, 2**16))
def test_invariant_to_token_wise_affine_rescaling(scale, shift, seed):
    """The LayerNorm in front: a·s + c (per token) gives the same output."""
    g = torch.Generator().manual_seed(seed)
    adapter = _adapter(8, 4, 2, dtype=torch.float64)
    adapter.norm.eps = 0.0  # exact invariance (eps only regularises tiny variances)
    x = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(adapter(x * scale + shift), adapter(x), rtol=1e-9, atol=1e-9)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    d, i, heads = 4, 4, 2
    x = torch.randn(1, 3, d, generator=g, dtype=torch.float64, requires_grad=True)
    weights = [
        t.detach().requires_grad_(True) for t in _official(d, i, dtype=torch.float64).values()
    ]
    nw, nb, wq, wk, wv, wo, bo = weights

    def f(x, nw, nb, wq, wk, wv, wo, bo):
        return self_attention_adapter(x, nw, nb, wq, wk, wv, wo, bo, heads=heads)

    assert torch.autograd.gradcheck(f, (x, nw, nb, wq, wk, wv, wo, bo))


def test_gradients_reach_every_parameter():
    adapter = _adapter(16, 8, 2)
    adapter(torch.randn(2, 5, 16)).square().sum().backward()
    for name, p in adapter.named_parameters():
        assert p.grad is not None, name
        assert bool(p.grad.abs().sum() > 0), name


def test_checks_off_gives_the_same_output():
    adapter = _adapter(16, 8, 2)
    x = torch.randn(2, 5, 16)
    with resad_kit.checks(False):
        off = adapter(x)
    assert torch.equal(off, adapter(x))


def test_default_init_is_pytorchs():
    torch.manual_seed(0)
    adapter = AttentionAdapter(64, 32, 4)
    torch.manual_seed(0)
    ln, q, k, v, o = (
        nn.LayerNorm(64),
        nn.Linear(64, 32, bias=False),
        nn.Linear(64, 32, bias=False),
        nn.Linear(64, 32, bias=False),
        nn.Linear(32, 64),
    )
    expected = {
        "norm.weight": ln.weight, "norm.bias": ln.bias, "to_q.weight": q.weight,
        "to_k.weight": k.weight, "to_v.weight": v.weight, "to_out.weight": o.weight,
        "to_out.bias": o.bias,
    }  # fmt: skip
    for key, value in adapter.state_dict().items():
        assert torch.equal(value, expected[key]), key


# ---------------------------------------------------------------------------- converter


def test_converter_round_trip_through_a_saved_file(tmp_path):
    d, i, heads = 16, 8, 2
    official = _official(d, i, seed=5)
    path = tmp_path / "visa_adaptor_state.pt"
    torch.save(official, path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    converted = AttentionAdapter.convert_official_state_dict(loaded)
    assert set(converted) == set(AttentionAdapter(d, i, heads).state_dict())
    adapter = AttentionAdapter(d, i, heads)
    adapter.load_state_dict(converted)  # strict
    x = torch.randn(2, 10, d)
    torch.testing.assert_close(adapter(x), _naive(x, official, heads), rtol=1e-5, atol=1e-5)
    # and back: every official tensor lands unchanged under its new name
    state = adapter.state_dict()
    renamed = {
        "attention.norm.weight": "norm.weight", "attention.norm.bias": "norm.bias",
        "attention.attn.to_q.weight": "to_q.weight", "attention.attn.to_k.weight": "to_k.weight",
        "attention.attn.to_v.weight": "to_v.weight",
        "attention.attn.to_out.0.weight": "to_out.weight",
        "attention.attn.to_out.0.bias": "to_out.bias",
    }  # fmt: skip
    for old, new in renamed.items():
        assert torch.equal(state[new], official[old]), old


def test_converter_accepts_the_official_module():
    torch.manual_seed(0)
    module = _OfficialLayout(16, 8)
    assert sorted(module.state_dict()) == sorted(OFFICIAL)
    from_module = AttentionAdapter.convert_official_state_dict(module)
    from_dict = AttentionAdapter.convert_official_state_dict(module.state_dict())
    assert from_module.keys() == from_dict.keys()
    for key in from_module:
        assert torch.equal(from_module[key], from_dict[key])


def test_converter_checks_given_widths():
    official = _official(16, 8)
    AttentionAdapter.convert_official_state_dict(official, dim=16, inner_dim=8)
    with pytest.raises(ValueError, match=r"attention.norm.weight.*shape \(1024,\)"):
        AttentionAdapter.convert_official_state_dict(official, dim=1024)
    with pytest.raises(ValueError, match=r"to_q.weight.*shape \(512, 16\)"):
        AttentionAdapter.convert_official_state_dict(official, inner_dim=512)


def test_converter_errors():
    convert = AttentionAdapter.convert_official_state_dict
    official = _official(16, 8)
    missing = {k: v for k, v in official.items() if k != "attention.attn.to_k.weight"}
    with pytest.raises(ValueError, match=r"missing \['attention.attn.to_k.weight'\]"):
        convert(missing)
    with pytest.raises(ValueError, match=r"unexpected \['adaptor.extra'\]"):
        convert({**official, "adaptor.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"missing .*unexpected .*to_q\.weight"):
        convert({k.replace("attention.", "", 1): v for k, v in official.items()})
    bad = dict(official)
    bad["attention.attn.to_out.0.weight"] = torch.zeros(8, 16)  # transposed
    with pytest.raises(ValueError, match=r"to_out.0.weight.*\(16, 8\).*got \(8, 16\)"):
        convert(bad)
    bad = dict(official)
    bad["attention.attn.to_v.weight"] = torch.zeros(8, 15)
    with pytest.raises(ValueError, match=r"to_v.weight"):
        convert(bad)
    with pytest.raises(TypeError, match="must be a tensor"):
        convert({**official, "attention.norm.bias": [0.0] * 16})
    with pytest.raises(TypeError, match="mapping"):
        convert(torch.zeros(3))
    with pytest.raises(ValueError, match="`dim`"):
        convert(official, dim=0)


def test_loading_the_wrong_width_fails_in_load_state_dict():
    converted = AttentionAdapter.convert_official_state_dict(_official(16, 8))
    with pytest.raises(RuntimeError, match="size mismatch"):
        AttentionAdapter(32, 8, 2).load_state_dict(converted)


# ---------------------------------------------------------------------------- checks


def test_constructor_errors():
    with pytest.raises(ValueError, match="`heads`=3 must divide `inner_dim`=8"):
        AttentionAdapter(16, 8, 3)
    for kwargs, arg in (
        ({"dim": 0}, "dim"),
        ({"inner_dim": -1}, "inner_dim"),
        ({"heads": 0}, "heads"),
    ):
        with pytest.raises(ValueError, match=f"`{arg}`"):
            AttentionAdapter(**kwargs)


def test_forward_errors():
    adapter = AttentionAdapter(16, 8, 2)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., T, 16\); got shape \(2, 5, 12\)"):
        adapter(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        adapter(torch.randn(16))
    with pytest.raises(ValueError, match="finite"):
        adapter(torch.full((1, 3, 16), float("nan")))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        adapter([[0.0] * 16])


def test_function_errors():
    d, i = 8, 4
    official = _official(d, i)
    nw, nb, wq, wk, wv, wo, bo = official.values()
    x = torch.randn(1, 3, d)
    with pytest.raises(ValueError, match="`heads`=3 must divide the inner width I=4"):
        self_attention_adapter(x, nw, nb, wq, wk, wv, wo, bo, heads=3)
    with pytest.raises(ValueError, match="`q_weight` must have shape"):
        self_attention_adapter(x, nw, nb, wq.T, wk, wv, wo, bo, heads=2)
    with pytest.raises(ValueError, match="`k_weight`"):
        self_attention_adapter(x, nw, nb, wq, wk[:2], wv, wo, bo, heads=2)
    with pytest.raises(ValueError, match="`out_weight`"):
        self_attention_adapter(x, nw, nb, wq, wk, wv, wo.T, bo, heads=2)
    with pytest.raises(ValueError, match="`norm_bias`"):
        self_attention_adapter(x, nw, nb[:3], wq, wk, wv, wo, bo, heads=2)
    with pytest.raises(ValueError, match="`out_bias`"):
        self_attention_adapter(x, nw, nb, wq, wk, wv, wo, bo[:3], heads=2)
    with pytest.raises(ValueError, match="`eps`"):
        self_attention_adapter(x, nw, nb, wq, wk, wv, wo, bo, heads=2, eps=0.0)
