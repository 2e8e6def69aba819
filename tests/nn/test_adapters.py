"""Tests of the residual adapters (resad_kit.nn.adapters; paper App. E, Eqs. 42–43)."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import resad_kit.nn
from resad_kit.nn import GlobalAdapter, LocalConvAdapter, Res2CLIPAdapters, ResidualAdapter

FLOAT_DTYPES = [torch.float32, torch.float64]


def _perturb_zero_init(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every zero-initialised up-projection random weights (no longer the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ResidualAdapter):
                m.fc2.weight.copy_(0.2 * torch.randn(m.fc2.weight.shape, generator=gen))
            elif isinstance(m, LocalConvAdapter):
                m.up.weight.copy_(0.2 * torch.randn(m.up.weight.shape, generator=gen))
    return module


def _reference_local(
    residual: torch.Tensor,
    p: dict[str, torch.Tensor],
    h: int,
    w: int,
    dilations: tuple[int, ...] = (1, 2),
    eps: float = 1e-5,
) -> torch.Tensor:
    """Straightforward Eq. 43 with explicit permute/reshape and F.conv2d (official key names).

    ``p`` holds ``norm.*``, ``down.weight``, ``conv{i}.weight``, ``internal_norm.*``,
    ``blend.weight``, ``up.weight``. ``residual`` is ``(B, N, D)``, tokens row-major.
    """
    b, _, d = residual.shape
    x = F.layer_norm(residual, (d,), p["norm.weight"], p["norm.bias"], eps)
    z0 = torch.relu(x @ p["down.weight"].T)  # (B, N, r)
    r = z0.shape[-1]
    z = z0.permute(0, 2, 1).reshape(b, r, h, w)  # channel-first map, row-major tokens
    maps = [z]
    for i, dil in enumerate(dilations):
        k = p[f"conv{i}.weight"].shape[-1]
        maps.append(
            F.conv2d(z, p[f"conv{i}.weight"], padding=dil * (k // 2), dilation=dil, groups=r)
        )
    u = torch.cat(maps, dim=1).reshape(b, -1, h * w).permute(0, 2, 1)  # (B, N, 3r)
    u = F.layer_norm(u, (u.shape[-1],), p["internal_norm.weight"], p["internal_norm.bias"], eps)
    zf = torch.relu(u @ p["blend.weight"].T)
    return residual + zf @ p["up.weight"].T


def _reference_params(adapter: LocalConvAdapter) -> dict[str, torch.Tensor]:
    sd = adapter.state_dict()
    return {
        **{k: v for k, v in sd.items() if not k.startswith("convs.")},
        **{f"conv{i}.weight": sd[f"convs.{i}.weight"] for i in range(len(adapter.convs))},
    }


# --------------------------------------------------------------------------- public surface


def test_public_surface() -> None:
    """`__all__` lists the four Res²CLIP adapters, and each is importable (the whole public
    surface of ``resad_kit.nn`` is pinned in tests/test_public_api.py)."""
    expected = {"GlobalAdapter", "LocalConvAdapter", "Res2CLIPAdapters", "ResidualAdapter"}
    assert expected <= set(resad_kit.nn.__all__)
    for name in expected:
        assert getattr(resad_kit.nn, name) is not None


# --------------------------------------------------------------------------- identity at init


@settings(max_examples=25)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=3),
    dim=st.sampled_from([4, 8, 12, 20]),
    activation=st.sampled_from(["gelu", "relu"]),
    norm=st.booleans(),
    bias=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    dtype=st.sampled_from(FLOAT_DTYPES),
    seed=st.integers(0, 2**16),
)
def test_residual_adapter_identity_at_init(lead, dim, activation, norm, bias, scale, dtype, seed):
    """A freshly built ResidualAdapter returns its input bit for bit, any shape/dtype."""
    torch.manual_seed(seed)
    adapter = ResidualAdapter(dim, activation=activation, norm=norm, bias=bias).to(dtype)
    r = scale * torch.randn(*lead, dim, dtype=dtype)
    assert torch.equal(adapter(r), r)


@settings(max_examples=25)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    dim=st.sampled_from([4, 8, 16]),
    dtype=st.sampled_from(FLOAT_DTYPES),
    seed=st.integers(0, 2**16),
)
def test_global_adapter_identity_at_init(lead, dim, dtype, seed):
    torch.manual_seed(seed)
    adapter = GlobalAdapter(dim).to(dtype)
    r = torch.randn(*lead, dim, dtype=dtype)
    assert torch.equal(adapter(r), r)


@settings(max_examples=25)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    dim=st.sampled_from([4, 8, 16]),
    dilations=st.sampled_from([(1, 2), (1,), (2, 3, 1)]),
    kernel_size=st.sampled_from([1, 3, 5]),
    dtype=st.sampled_from(FLOAT_DTYPES),
    seed=st.integers(0, 2**16),
)
def test_local_adapter_identity_at_init(lead, h, w, dim, dilations, kernel_size, dtype, seed):
    """LocalConvAdapter is the identity at init for any grid, leading dims and dtype."""
    torch.manual_seed(seed)
    adapter = LocalConvAdapter(dim, dilations=dilations, kernel_size=kernel_size).to(dtype)
    r = torch.randn(*lead, h * w, dim, dtype=dtype)
    assert torch.equal(adapter(r, grid=(h, w)), r)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_res2clip_adapters_identity_at_init(dtype: torch.dtype) -> None:
    adapters = Res2CLIPAdapters(dim=16, num_layers=2).to(dtype)
    g = torch.randn(3, 16, dtype=dtype)
    loc = torch.randn(3, 9, 16, dtype=dtype)
    for m in (adapters.text, adapters.residual_text, adapters.residual_global):
        assert torch.equal(m(g), g)
    for m in (*adapters.visual, *adapters.residual_local):
        assert torch.equal(m(loc), loc)


# --------------------------------------------------------------------------- perturbed / gradients


def _all_adapters(dim: int = 16) -> list[tuple[nn.Module, tuple[int, ...]]]:
    return [
        (ResidualAdapter(dim), (3, dim)),
        (ResidualAdapter(dim, activation="relu", norm=False, bias=True), (3, dim)),
        (GlobalAdapter(dim), (3, dim)),
        (LocalConvAdapter(dim), (2, 16, dim)),
        (LocalConvAdapter(dim, dilations=(1, 2, 3), kernel_size=5), (2, 25, dim)),
    ]


@pytest.mark.parametrize("index", range(5))
def test_perturbed_adapter_is_not_identity(index: int) -> None:
    """With the zero-init weights randomised the output changes, so the identity tests bite."""
    torch.manual_seed(index)
    adapter, shape = _all_adapters()[index]
    _perturb_zero_init(adapter)
    r = torch.randn(shape)
    assert not torch.allclose(adapter(r), r)


@pytest.mark.parametrize("index", range(5))
def test_only_up_projection_gets_gradient_at_init(index: int) -> None:
    """At init W_up = 0 blocks the gradient to every earlier layer; W_up itself gets one.

    This is why the gradient-flow test below perturbs W_up first.
    """
    torch.manual_seed(index)
    adapter, shape = _all_adapters()[index]
    r = torch.randn(shape)
    (adapter(r) * torch.randn(shape)).sum().backward()
    up = adapter.fc2 if isinstance(adapter, ResidualAdapter) else adapter.up
    for name, p in adapter.named_parameters():
        if any(p is q for q in up.parameters()):
            assert p.grad is not None, name
            assert p.grad.abs().max() > 0, name
        else:
            assert p.grad is None or not p.grad.any(), name


@pytest.mark.parametrize("index", range(5))
def test_gradients_reach_all_parameters(index: int) -> None:
    """After perturbing W_up (zero at init), a loss on the output reaches every parameter."""
    torch.manual_seed(index)
    adapter, shape = _all_adapters()[index]
    _perturb_zero_init(adapter)
    r = torch.randn(shape, requires_grad=True)
    (adapter(r) * torch.randn(shape)).sum().backward()
    params = dict(adapter.named_parameters())
    assert params
    for name, p in params.items():
        assert p.grad is not None, name
        assert p.grad.abs().max() > 0, name
    assert r.grad is not None
    assert r.grad.abs().max() > 0


def test_one_optimizer_step_unlocks_gradients() -> None:
    """Alternative to perturbing: after one Adam step on W_up, all parameters get gradients."""
    torch.manual_seed(0)
    adapter = LocalConvAdapter(16)
    opt = torch.optim.Adam(adapter.parameters(), lr=1e-2)
    r, target = torch.randn(2, 16, 16), torch.randn(2, 16, 16)
    for _ in range(2):
        opt.zero_grad()
        (adapter(r) * target).sum().backward()
        opt.step()
    for name, p in adapter.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().max() > 0, name


# --------------------------------------------------------------------------- parameter counts


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_spec() -> None:
    """App. E with bias-free layers (hito2448/Res2CLIP `models/adapter.py`): 296,448 (global),
    411,648 (local), 4,182,528 in all (paper App. G.2: 4.18 M)."""
    assert _count(GlobalAdapter(768)) == 296_448
    assert _count(LocalConvAdapter(768)) == 411_648
    adapters = Res2CLIPAdapters(768, 4)
    assert _count(adapters) == 4_182_528
    assert _count(adapters.text) + _count(adapters.residual_text) == 2 * 296_448
    assert len(adapters.visual) == len(adapters.residual_local) == 4


def test_parameter_counts_variants() -> None:
    assert _count(ResidualAdapter(768, norm=False)) == 2 * 768 * 192
    assert _count(ResidualAdapter(768, bias=True)) == 296_448 + 192 + 768
    assert _count(ResidualAdapter(768, 64)) == 2 * 768 + 2 * 768 * 64
    # one extra dilation: + one depthwise conv (r·9) + LN₂/blend widen by r
    r = 192
    extra = r * 9 + 2 * r + r * r
    assert _count(LocalConvAdapter(768, dilations=(1, 2, 3))) == 411_648 + extra


def test_no_parameter_sharing() -> None:
    adapters = Res2CLIPAdapters(16, 3)
    ptrs = [p.data_ptr() for p in adapters.parameters()]
    assert len(ptrs) == len(set(ptrs))


def test_initialisation() -> None:
    """W_up zero; convs kaiming fan_out (std sqrt(2/(r·k²))); LN affine at 1/0."""
    torch.manual_seed(0)
    a = LocalConvAdapter(768)
    assert not a.up.weight.any()
    for conv in a.convs:
        assert conv.weight.shape == (192, 1, 3, 3)
        std = conv.weight.std().item()
        assert abs(std - (2 / (192 * 9)) ** 0.5) < 0.1 * std
    assert [c.dilation for c in a.convs] == [(1, 1), (2, 2)]
    assert [c.padding for c in a.convs] == [(1, 1), (2, 2)]
    assert all(m.bias is None for m in a.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert a.norm.eps == a.internal_norm.eps == 1e-5
    g = GlobalAdapter(768)
    assert not g.fc2.weight.any()
    assert g.fc1.weight.any()
    assert isinstance(g.act, nn.GELU)
    assert g.act.approximate == "none"
    assert g.fc1.bias is None
    assert g.fc2.bias is None


# --------------------------------------------------------------------------- reference equality


@pytest.mark.parametrize(
    ("h", "w", "dilations", "kernel_size"),
    [
        (5, 5, (1, 2), 3),
        (3, 7, (1, 2), 3),
        (6, 2, (1, 2), 3),
        (1, 4, (1, 2), 3),
        (4, 6, (1, 3, 2), 5),
    ],
)
def test_local_adapter_matches_reference(h, w, dilations, kernel_size) -> None:
    """Same weights, independent straightforward implementation, square and non-square grids."""
    torch.manual_seed(h * 10 + w)
    adapter = LocalConvAdapter(32, dilations=dilations, kernel_size=kernel_size).double()
    _perturb_zero_init(adapter)
    with torch.no_grad():  # non-trivial LayerNorm affines too
        for ln in (adapter.norm, adapter.internal_norm):
            ln.weight.normal_(1.0, 0.2)
            ln.bias.normal_(0.0, 0.2)
    r = torch.randn(3, h * w, 32, dtype=torch.float64)
    grid = None if h == w else (h, w)
    expected = _reference_local(r, _reference_params(adapter), h, w, dilations)
    torch.testing.assert_close(adapter(r, grid=grid), expected, rtol=1e-12, atol=1e-12)


def test_global_adapter_matches_reference() -> None:
    torch.manual_seed(0)
    adapter = _perturb_zero_init(GlobalAdapter(24).double())
    r = torch.randn(4, 24, dtype=torch.float64)
    ln = F.layer_norm(r, (24,), adapter.norm.weight, adapter.norm.bias, 1e-5)
    hidden = 0.5 * (ln @ adapter.fc1.weight.T) * (1 + torch.erf(ln @ adapter.fc1.weight.T / 2**0.5))
    expected = r + hidden @ adapter.fc2.weight.T
    torch.testing.assert_close(adapter(r), expected, rtol=1e-12, atol=1e-12)


def test_local_adapter_row_major_token_order() -> None:
    """Changing token y·w + x changes exactly the outputs in its convolution footprint.

    On a non-square 5×7 grid with dilations (1, 2) the footprint of (y, x) is the
    cells (y + dy, x + dx) with dy, dx ∈ {−2, −1, 0, 1, 2} \\ {±1 mixed with ±2}.
    A column-major or transposed layout would change a different set of tokens.
    """
    torch.manual_seed(0)
    h, w = 5, 7
    adapter = _perturb_zero_init(LocalConvAdapter(64).double())
    r = torch.randn(1, h * w, 64, dtype=torch.float64)
    y, x = 2, 4
    r2 = r.clone()
    r2[0, y * w + x] += torch.randn(64, dtype=torch.float64)
    changed = (adapter(r, grid=(h, w)) - adapter(r2, grid=(h, w))).abs().amax(-1)[0] > 1e-12
    offsets = {(dy, dx) for d in (1, 2) for dy in (-d, 0, d) for dx in (-d, 0, d)}
    expected = torch.zeros(h * w, dtype=torch.bool)
    for dy, dx in offsets:
        if 0 <= y + dy < h and 0 <= x + dx < w:
            expected[(y + dy) * w + (x + dx)] = True
    assert torch.equal(changed, expected)


def test_local_adapter_leading_dims() -> None:
    """(..., N, D) equals the same tokens flattened into one batch; (N, D) is one image."""
    torch.manual_seed(0)
    adapter = _perturb_zero_init(LocalConvAdapter(16))
    r = torch.randn(2, 3, 12, 16)
    out = adapter(r, grid=(3, 4))
    assert out.shape == r.shape
    torch.testing.assert_close(out, adapter(r.reshape(6, 12, 16), grid=(3, 4)).reshape(r.shape))
    torch.testing.assert_close(adapter(r[0, 1], grid=(3, 4)), out[0, 1])


def test_local_adapter_batch_independence() -> None:
    torch.manual_seed(0)
    adapter = _perturb_zero_init(LocalConvAdapter(16))
    r = torch.randn(4, 9, 16)
    torch.testing.assert_close(adapter(r)[1:2], adapter(r[1:2]))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (GlobalAdapter(16), (3, 8)),
        (ResidualAdapter(16), (16, 3)),
        (LocalConvAdapter(16), (2, 9, 8)),
    ],
)
def test_wrong_last_dim_raises(module: nn.Module, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"`residual` must have shape .*16\); got shape") as e:
        module(torch.randn(shape))
    assert str(tuple(shape)) in str(e.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_raises(bad: float) -> None:
    r = torch.randn(2, 9, 16)
    r[1, 3, 5] = bad
    with pytest.raises(ValueError, match="`residual` must be finite"):
        LocalConvAdapter(16)(r)
    with pytest.raises(ValueError, match="`residual` must be finite"):
        GlobalAdapter(16)(r)


def test_local_adapter_needs_tokens_dim() -> None:
    with pytest.raises(ValueError, match="`residual` must have at least 2 dimensions"):
        LocalConvAdapter(16)(torch.randn(16))


def test_non_tensor_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"`residual` must be a torch\.Tensor"):
        GlobalAdapter(16)([0.0] * 16)


def test_grid_errors() -> None:
    adapter = LocalConvAdapter(16)
    with pytest.raises(ValueError, match="not a perfect square"):
        adapter(torch.randn(1, 12, 16))
    with pytest.raises(
        ValueError, match=r"`grid`=\(3, 5\) holds 15 patches but `residual` has N=12"
    ):
        adapter(torch.randn(1, 12, 16), grid=(3, 5))
    for grid in [(3,), (0, 12), (3.0, 4), "34"]:
        with pytest.raises(ValueError, match="`grid` must be a pair"):
            adapter(torch.randn(1, 12, 16), grid=grid)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ResidualAdapter(0), "`dim` must be a positive int"),
        (lambda: ResidualAdapter(-4), "`dim` must be a positive int"),
        (lambda: ResidualAdapter(16, 0), "`bottleneck` must be a positive int"),
        (lambda: ResidualAdapter(16, -1), "`bottleneck` must be a positive int"),
        (lambda: ResidualAdapter(3), "dim // 4 is 0"),
        (lambda: ResidualAdapter(16, activation="tanh"), "`activation` must be one of"),
        (lambda: GlobalAdapter(16, 0), "`bottleneck` must be a positive int"),
        (lambda: LocalConvAdapter(0), "`dim` must be a positive int"),
        (lambda: LocalConvAdapter(16, 0), "`bottleneck` must be a positive int"),
        (lambda: LocalConvAdapter(16, kernel_size=2), "`kernel_size` must be odd"),
        (lambda: LocalConvAdapter(16, kernel_size=0), "`kernel_size` must be a positive int"),
        (lambda: LocalConvAdapter(16, dilations=()), "`dilations` must not be empty"),
        (lambda: LocalConvAdapter(16, dilations=(1, 0)), "`dilations` must be a positive int"),
        (lambda: Res2CLIPAdapters(16, 0), "`num_layers` must be a positive int"),
    ],
)
def test_invalid_constructor_args(factory, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


# --------------------------------------------------------------------------- groups and phases


def test_parameter_groups() -> None:
    """Disjoint groups covering all parameters, with the lrs of paper App. F.2."""
    adapters = Res2CLIPAdapters(16, 2)
    groups = adapters.parameter_groups()
    names = [g["name"] for g in groups]
    assert names == ["visual", "residual_local", "residual_global", "text", "residual_text"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in adapters.parameters()}
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {
        "visual": 5e-4,
        "residual_local": 5e-4,
        "residual_global": 1e-4,
        "text": 1e-4,
        "residual_text": 1e-4,
    }
    for g in groups:  # each group is exactly the attribute's parameters
        assert [id(p) for p in g["params"]] == [
            id(p) for p in getattr(adapters, g["name"]).parameters()
        ]
    code = adapters.parameter_groups(lr_local=1e-3, lr_text=2e-4, lr_global_visual=5e-4)
    assert {g["name"]: g["lr"] for g in code}["residual_global"] == 5e-4
    assert {g["name"]: g["lr"] for g in code}["visual"] == 1e-3
    assert {g["name"]: g["lr"] for g in code}["residual_text"] == 2e-4
    opt = torch.optim.Adam(groups, betas=(0.5, 0.999))
    assert [g["name"] for g in opt.param_groups] == names


@pytest.mark.parametrize("bad", [-1e-4, float("nan"), float("inf"), "1e-4"])
def test_parameter_groups_rejects_bad_lr(bad) -> None:
    with pytest.raises(ValueError, match="`lr_text` must be a finite number"):
        Res2CLIPAdapters(16, 1).parameter_groups(lr_text=bad)


def test_phase_modules() -> None:
    """Eq. 15 and App. F.2: A_t, A_{v,l} always; "visual" (even epochs) adds the residual visual
    adapters, "text" (odd epochs) adds A_t^res; together they cover every adapter."""
    adapters = Res2CLIPAdapters(16, 2)
    visual = adapters.phase_modules("visual")
    text = adapters.phase_modules("text")
    assert list(visual) == ["text", "visual", "residual_local", "residual_global"]
    assert list(text) == ["text", "visual", "residual_text"]
    for phase in (visual, text):
        for name, module in phase.items():
            assert module is getattr(adapters, name)
    assert set(visual) | set(text) == {name for name, _ in adapters.named_children()}
    assert set(visual) & set(text) == {"text", "visual"}
    with pytest.raises(ValueError, match="`update` must be 'visual' or 'text'"):
        adapters.phase_modules("even")


# --------------------------------------------------------------------------- device, state dict


def test_adapters_on_device(device: torch.device) -> None:
    torch.manual_seed(0)
    adapters = _perturb_zero_init(Res2CLIPAdapters(16, 2)).to(device)
    g = torch.randn(2, 16, device=device)
    loc = torch.randn(2, 12, 16, device=device)
    outs = [adapters.text(g), adapters.residual_global(g)]
    outs += [m(loc, grid=(4, 3)) for m in adapters.visual]
    for out in outs:
        assert out.device.type == device.type
        assert torch.isfinite(out).all()
    cpu = adapters.to("cpu")
    torch.testing.assert_close(
        outs[2].cpu(), cpu.visual[0](loc.cpu(), grid=(4, 3)), rtol=1e-4, atol=1e-5
    )


def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    src = _perturb_zero_init(Res2CLIPAdapters(16, 2))
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    dst = Res2CLIPAdapters(16, 2)
    dst.load_state_dict(torch.load(buffer, weights_only=True))
    g, loc = torch.randn(2, 16), torch.randn(2, 9, 16)
    assert torch.equal(src.residual_text(g), dst.residual_text(g))
    assert torch.equal(src.residual_local[1](loc), dst.residual_local[1](loc))
    assert not torch.equal(dst.residual_local[1](loc), loc)


# --------------------------------------------------------------------------- official checkpoint


def _official_checkpoint(dim: int, layers: tuple[int, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """Random tensors under the official key names and shapes (models/adapter.py, train.py)."""
    r = dim // 4
    glob = {
        "norm.weight": (dim,),
        "norm.bias": (dim,),
        "fc1.weight": (r, dim),
        "fc2.weight": (dim, r),
    }
    loc = {
        "norm.weight": (dim,),
        "norm.bias": (dim,),
        "down.weight": (r, dim),
        "conv_fine.weight": (r, 1, 3, 3),
        "conv_coarse.weight": (r, 1, 3, 3),
        "internal_norm.weight": (3 * r,),
        "internal_norm.bias": (3 * r,),
        "blend.weight": (r, 3 * r),
        "up.weight": (dim, r),
    }

    def rand(shapes: dict[str, tuple[int, ...]], prefix: str = "") -> dict[str, torch.Tensor]:
        return {prefix + k: torch.randn(s, dtype=torch.float64) for k, s in shapes.items()}

    local = lambda: {k: v for layer in layers for k, v in rand(loc, f"{layer}.").items()}  # noqa: E731
    return {
        "vis_adapters": local(),
        "res_vis_local_adapters": local(),
        "res_vis_global_adapter": rand(glob),
        "res_text_adapter": rand(glob),
        "text_adapter": rand(glob),
    }


def test_convert_official_state_dict() -> None:
    """Official keys map onto this module (strict load); conv_fine is dilation 1."""
    torch.manual_seed(0)
    layers = (6, 12, 18, 24)
    ckpt = _official_checkpoint(16, layers)
    adapters = Res2CLIPAdapters(16, len(layers)).double()
    adapters.load_state_dict(Res2CLIPAdapters.convert_official_state_dict(ckpt, layers))
    assert torch.equal(adapters.text.fc2.weight, ckpt["text_adapter"]["fc2.weight"])
    assert torch.equal(
        adapters.residual_global.norm.bias, ckpt["res_vis_global_adapter"]["norm.bias"]
    )
    off = ckpt["res_vis_local_adapters"]
    p = {k[len("12.") :]: v for k, v in off.items() if k.startswith("12.")}
    p["conv0.weight"], p["conv1.weight"] = p.pop("conv_fine.weight"), p.pop("conv_coarse.weight")
    r = torch.randn(2, 20, 16, dtype=torch.float64)
    expected = _reference_local(r, p, 4, 5)
    torch.testing.assert_close(adapters.residual_local[1](r, grid=(4, 5)), expected)
    with pytest.raises(ValueError, match="has layer '6', not in `layers`"):
        Res2CLIPAdapters.convert_official_state_dict(ckpt, (12, 18, 24, 30))
