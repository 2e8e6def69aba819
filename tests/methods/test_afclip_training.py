"""AF-CLIP's losses equal their equations written here; training moves only the adapter and
the prompt context; the released-weights format loads to the same model as native weights."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
import torch.nn.functional as F

from resad_kit.clip import ClipBackbone
from resad_kit.engine.checkpoint_afclip import (
    load_afclip_weights,
    official_weight_files,
    read_official_adaptor,
)
from resad_kit.methods import AFCLIP, AFCLIPConfig, AFCLIPModules, TrainingBatch
from resad_kit.ops import spatial_aggregate

SIZE = 64
MILD = AFCLIPConfig.official_code(temperature=5.0, adapter_inner_dim=64)  # unsaturated p


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=5, vv_blocks=0, tap_output="residual", tap_cls=True)


@pytest.fixture(scope="module")
def batch(backbone) -> TrainingBatch:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, SIZE, SIZE, generator=g)
    masks = torch.zeros(4, SIZE, SIZE)
    masks[0, 8:40, 16:48] = 1  # two anomalous images, two normal ones
    masks[2, 30:60, 0:20] = 1
    with torch.no_grad():
        feats = backbone(images)
    return TrainingBatch(feats, None, masks)


def _focal(p, y, gamma=4.0):
    bce = -(y * p.log().clamp_min(-100) + (1 - y) * (1 - p).log().clamp_min(-100))
    p_t = p * y + (1 - p) * (1 - y)
    return (bce * (1 - p_t) ** gamma).mean()


def _pal(z, labels):
    """Eq. 14 with the code's pooling: every ordered pair of patches of one image."""
    na, same = [], []
    for zb, lb in zip(F.normalize(z, dim=-1), labels, strict=True):
        sim, sign = zb @ zb.T, (2 * lb - 1)[:, None] * (2 * lb - 1)[None]
        na.append(sim[sign < 0])
        same.append(sim[sign > 0])
    na, same = torch.cat(na), torch.cat(same)
    return (na.mean() - same.mean()).clamp_min(0) if len(na) else torch.zeros(())


def test_losses_equal_the_equations(backbone, batch):
    torch.manual_seed(0)  # an adapter initialisation whose views give a positive L_pal
    model = AFCLIP(backbone, MILD)
    feats, masks = batch.query, batch.masks
    labels = F.interpolate(masks[:, None], size=(8, 8), mode="bilinear") > 0.5
    labels = labels.flatten(1).float()
    assert 0 < labels.sum() < labels.numel()
    text = F.normalize(model.prompts(), dim=-1)
    views = [
        backbone.project_tokens(
            model.adapter(
                torch.cat(
                    [feats.tap_cls[t][:, None], spatial_aggregate(feats.patches[t], (8, 8), r)], 1
                )
            )
        )
        for t in range(4)
        for r in (1, 3, 5)
    ]
    logits = sum(F.normalize(z, dim=-1) @ text.T / 5.0 for z in views)
    p = logits.softmax(-1)[..., 1]
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    l_cls = _focal(p[:, 0], y)
    l_seg = _focal(p[:, 1:], labels) + (p[:, 1:] - labels).abs().mean()
    l_pal = torch.stack([_pal(z[:, 1:], labels) for z in views]).mean()
    assert l_pal > 0
    out = model.losses(batch, "train")
    expected = {"cls": l_cls, "seg": l_seg, "pal": l_pal, "total": l_cls + l_seg + l_pal}
    assert list(out) == list(expected)
    for key, value in expected.items():
        torch.testing.assert_close(out[key], value, atol=1e-5, rtol=1e-4, msg=key)
    weighted = AFCLIP(backbone, MILD.replace(lambda_seg=2.0, lambda_pal=0.5), model.parts)
    total = weighted.losses(batch, "train")["total"]
    torch.testing.assert_close(total, l_cls + 2 * l_seg + 0.5 * l_pal, atol=1e-5, rtol=1e-4)


def test_training_steps_lower_the_loss_and_move_only_the_adapter_and_the_context(backbone, batch):
    model = AFCLIP(backbone, MILD.replace(taps=(1, 3), windows=(1, 3)))  # 4 views: fast
    clip_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    parts_before = {k: v.clone() for k, v in model.parts.state_dict().items()}
    (group,) = model.optimizer_groups()
    assert group.phases == ("train",)
    assert [(m is model.parts, lr) for m, lr in group.params] == [(True, 1e-4)]
    optimizer = torch.optim.Adam(model.parts.parameters(), lr=1e-2, betas=(0.5, 0.999))
    totals = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = model.losses(batch, "train")["total"]
        loss.backward()
        if not totals:
            assert all(p.grad is None for p in backbone.parameters())
            assert all(
                p.grad is not None and p.grad.abs().sum() > 0 for p in model.parts.parameters()
            )
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < totals[0]
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in clip_before.items())
    moved = {k for k, v in model.parts.state_dict().items() if not torch.equal(v, parts_before[k])}
    assert moved == set(parts_before)  # every adapter weight and the context
    assert set(parts_before) == {f"adapter.{k}" for k in model.adapter.state_dict()} | {
        "prompts.ctx"
    }
    with pytest.raises(ValueError, match="`phase` must be 'train'"):
        model.losses(batch, "visual")


def _official_adaptor_module(tmp_path, adapter):
    """A module with the official Adaptor's attribute layout, pickled whole (as released)."""
    package = tmp_path / "afclip_official_stub"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "adaptor.py").write_text(
        "from torch import nn\n"
        "class CrossAttention(nn.Module):\n"
        "    def __init__(self, d, i):\n"
        "        super().__init__()\n"
        "        self.to_q = nn.Linear(d, i, bias=False)\n"
        "        self.to_k = nn.Linear(d, i, bias=False)\n"
        "        self.to_v = nn.Linear(d, i, bias=False)\n"
        "        self.to_out = nn.Sequential(nn.Linear(i, d), nn.Dropout(0.0))\n"
        "class BasicTransformerBlock(nn.Module):\n"
        "    def __init__(self, d, i):\n"
        "        super().__init__()\n"
        "        self.norm = nn.LayerNorm(d)\n"
        "        self.attn = CrossAttention(d, i)\n"
        "class Adaptor(nn.Module):\n"
        "    def __init__(self, d, i):\n"
        "        super().__init__()\n"
        "        self.attention = BasicTransformerBlock(d, i)\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        stub = importlib.import_module("afclip_official_stub.adaptor")
        official = stub.Adaptor(adapter.dim, adapter.inner_dim)
        a, o = adapter, official.attention
        with torch.no_grad():
            o.norm.weight.copy_(a.norm.weight)
            o.norm.bias.copy_(a.norm.bias)
            for name in ("to_q", "to_k", "to_v"):
                getattr(o.attn, name).weight.copy_(getattr(a, name).weight)
            o.attn.to_out[0].weight.copy_(a.to_out.weight)
            o.attn.to_out[0].bias.copy_(a.to_out.bias)
        weights_dir = tmp_path / "weight"
        weights_dir.mkdir()
        adaptor_path, prompt_path = official_weight_files(weights_dir, "visa")
        torch.save(official, adaptor_path)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("afclip_official_stub")]:
            del sys.modules[name]
    return adaptor_path, prompt_path


def test_the_released_format_loads_to_the_same_model(backbone, tmp_path):
    """A pickled official Adaptor module and a (1, M, W) prompt parameter, written here in
    the official layout, give outputs identical to the same weights loaded natively; the
    official package is not importable while reading (no foreign code runs)."""
    g = torch.Generator().manual_seed(7)
    native = AFCLIP(backbone)
    with torch.no_grad():
        for p in native.parts.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    adaptor_path, prompt_path = _official_adaptor_module(tmp_path, native.adapter)
    torch.save(torch.nn.Parameter(native.prompts.ctx.detach().clone()), prompt_path)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("afclip_official_stub")
    loaded = load_afclip_weights(AFCLIP(backbone), adaptor_path, prompt_path)
    for key, value in native.parts.state_dict().items():
        assert torch.equal(loaded.parts.state_dict()[key], value), key
    images = torch.randn(2, 3, SIZE, SIZE, generator=g)
    with torch.no_grad():
        a, b = native(images), loaded(images)
    assert torch.equal(a.anomaly_map, b.anomaly_map)
    assert torch.equal(a.image_score, b.image_score)
    sd = read_official_adaptor(adaptor_path)  # also a plain state dict file
    torch.save(sd, tmp_path / "state.pt")
    assert read_official_adaptor(tmp_path / "state.pt").keys() == sd.keys()


def test_a_malicious_pickle_runs_nothing(tmp_path):
    """Any callable other than the tensor rebuilders becomes an inert record."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    torch.save({"payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="neither the official Adaptor module"):
        read_official_adaptor(tmp_path / "evil.pt")
    assert not marker.exists()


def test_the_trainable_part_is_the_adapter_and_the_prompts(backbone):
    model = AFCLIP(backbone)
    assert model.trainable_module() is model.parts
    assert isinstance(model.parts, AFCLIPModules)
    n = sum(p.numel() for p in model.parts.parameters())
    assert n == sum(p.numel() for p in model.adapter.parameters()) + 12 * 64
    shared = AFCLIP(backbone, AFCLIPConfig.paper(), model.parts)
    assert shared.adapter is model.adapter
