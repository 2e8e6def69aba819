"""Window embeddings (resad_kit.clip.windows; WinCLIP Sec. 3.3, anomalib issue #2571).

The reference is anomalib's computation rewritten here from open_clip's own modules: the
token map captured where open_clip's ``VisionTransformer`` hands it to ``patch_dropout``
(a forward hook, test-only), then, one window at a time, CLS + the window's tokens through
``ln_pre``, open_clip's ``transformer`` as a batch-first ``(1, T, C)`` sequence,
``ln_post``, the CLS token and ``proj``. The tiny backbone runs at its native 32 px (a 4×4
grid), so open_clip's own forward applies.
"""

from __future__ import annotations

import pytest
import torch

from resad_kit.clip import ClipBackbone
from resad_kit.clip.windows import WindowBackbone, WindowEmbeddings, encode_windows
from resad_kit.engine.features import backbone_fingerprint

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=3, image_size=32)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _open_clip_reference(backbone, images, scales):
    """anomalib's encode_image + _get_window_embeddings, a Python loop over windows."""
    visual = backbone.model.visual
    captured = {}
    hook = visual.patch_dropout.register_forward_hook(
        lambda _m, inputs, _o: captured.__setitem__("map", inputs[0])
    )
    visual.output_tokens = True
    try:
        with torch.no_grad():
            image, tokens = visual(images)
    finally:
        visual.output_tokens = False
        hook.remove()
    feature_map = captured["map"]  # (B, 1 + N, C): CLS + patches, positions added
    h = w = 4
    windows = []
    for s in scales:
        per_image = []
        for b in range(images.shape[0]):
            rows = []
            for y0 in range(h - s + 1):
                for x0 in range(w - s + 1):
                    keep = [0] + [1 + (y0 + a) * w + x0 + c for a in range(s) for c in range(s)]
                    seq = visual.ln_pre(feature_map[b : b + 1, keep])
                    with torch.no_grad():
                        out = visual.ln_post(visual.transformer(seq))
                    rows.append(out[0, 0] @ visual.proj)
            per_image.append(torch.stack(rows))
        windows.append(torch.stack(per_image))
    return image, windows, tokens


def test_batched_windows_equal_one_forward_per_window(backbone, images):
    out = encode_windows(backbone, images, (2, 3))
    image, windows, tokens = _open_clip_reference(backbone, images, (2, 3))
    assert isinstance(out, WindowEmbeddings)
    assert out.grid == (4, 4)
    assert [tuple(w.shape) for w in out.windows] == [(2, 9, 32), (2, 4, 32)]
    for got, expected in zip(out.windows, windows, strict=True):
        torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(out.image, image, **TOL)  # open_clip's encode_image
    torch.testing.assert_close(out.patches, tokens, **TOL)  # open_clip's output_tokens
    assert all(t.dtype == torch.float32 for t in (out.image, out.patches, *out.windows))


def test_different_windows_give_different_embeddings(backbone, images):
    out = encode_windows(backbone, images, (2, 3))
    for windows in out.windows:
        unit = torch.nn.functional.normalize(windows, dim=-1)
        cosine = unit @ unit.transpose(1, 2)
        off_diagonal = cosine[:, ~torch.eye(cosine.shape[1], dtype=torch.bool)]
        assert float(off_diagonal.max()) < 1 - 1e-4  # no two windows alike


def test_the_2571_permutation_makes_every_window_identical(backbone, images):
    """anomalib 2.7's NLD → LND permute fed to a batch-first transformer (the bug we avoid)."""
    visual = backbone.model.visual
    assert visual.transformer.batch_first  # open_clip ≥ 2.26.1
    out = encode_windows(backbone, images[:1], (2,))
    with torch.no_grad():
        cls = visual.class_embedding + visual.positional_embedding[0]
        patches = visual.conv1(images[:1]).flatten(2).transpose(1, 2)[0]
        feature_map = torch.cat([cls[None], patches + visual.positional_embedding[1:]])
    masks = out.indices[0]  # (9, 4)
    batch = torch.stack([feature_map[[0, *(m + 1).tolist()]] for m in masks])  # (9, 5, C)
    with torch.no_grad():
        buggy = visual.transformer(visual.ln_pre(batch).permute(1, 0, 2)).permute(1, 0, 2)
        buggy = visual.ln_post(buggy)[:, 0] @ visual.proj
        right = visual.ln_post(visual.transformer(visual.ln_pre(batch)))[:, 0] @ visual.proj
    assert float((buggy - buggy[:1]).abs().max()) < 1e-5  # every window the same: flat map
    torch.testing.assert_close(out.windows[0][0], right, **TOL)
    assert float((out.windows[0][0] - out.windows[0][0, :1]).abs().max()) > 1e-3


def test_batch_rows_are_independent(backbone, images):
    both = encode_windows(backbone, images, (2,))
    second = encode_windows(backbone, images[1:], (2,))
    torch.testing.assert_close(both.windows[0][1:], second.windows[0], **TOL)
    torch.testing.assert_close(both.patches[1:], second.patches, **TOL)


def test_patch_layer_and_stride(backbone, images):
    last = encode_windows(backbone, images, (2,), patch_layer=backbone.depth)
    default = encode_windows(backbone, images, (2,))
    assert torch.equal(last.patches, default.patches)
    visual = backbone.model.visual
    with torch.no_grad():
        x = visual._embeds(images)  # open_clip's own stem
        x = visual.transformer.resblocks[0](x)
        expected = visual.ln_post(x)[:, 1:]
    first = encode_windows(backbone, images, (2,), patch_layer=1)
    torch.testing.assert_close(first.patches, expected, **TOL)
    strided = encode_windows(backbone, images, (2,), stride=2)
    assert strided.windows[0].shape == (2, 4, 32)
    torch.testing.assert_close(strided.windows[0], default.windows[0][:, [0, 2, 6, 8]], **TOL)


def test_any_grid_uses_the_backbones_positional_table():
    backbone = ClipBackbone.tiny(seed=1)  # 64 px: the 4×4 table interpolated to 8×8
    out = encode_windows(backbone, torch.randn(1, 3, 64, 64), (2, 3))
    assert [tuple(w.shape) for w in out.windows] == [(1, 49, 32), (1, 36, 32)]
    features = backbone(torch.zeros(1, 3, 64, 64))
    assert features.grid == out.grid


def test_window_backbone_packs_for_the_feature_cache(backbone, images):
    packed = WindowBackbone.wrap(backbone, scales=(2, 3))
    assert packed.model is backbone.model
    assert packed.model_name == "resad-tiny+windows2,3/1"
    assert backbone_fingerprint(packed) != backbone_fingerprint(backbone)
    features = packed(images)
    assert features.patches[0].shape == (2, 16 + 9 + 4, 64)
    unpacked = packed.unpack(features)
    direct = encode_windows(backbone, images, (2, 3))
    torch.testing.assert_close(unpacked.image, direct.image, **TOL)
    torch.testing.assert_close(unpacked.patches, direct.patches, **TOL)
    for a, b in zip(unpacked.windows, direct.windows, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    assert all(torch.equal(a, b) for a, b in zip(unpacked.indices, direct.indices, strict=True))
    with pytest.raises(ValueError, match="must hold one packed tensor of 29 rows"):
        packed.unpack(backbone(images))
    assert WindowBackbone.tiny(image_size=32).scales == (2, 3)  # constructors: defaults


def test_errors(backbone, images):
    with pytest.raises(ValueError, match="`scales` must be distinct positive ints"):
        encode_windows(backbone, images, (2, 2))
    with pytest.raises(ValueError, match="`scales` must be a positive int"):
        encode_windows(backbone, images, (0,))
    with pytest.raises(ValueError, match="window size 5 does not fit the 4×4 patch grid"):
        encode_windows(backbone, images, (5,))
    with pytest.raises(ValueError, match=r"`patch_layer` must be None or a block in 1\.\.4"):
        encode_windows(backbone, images, (2,), patch_layer=5)
    with pytest.raises(ValueError, match="`stride` must be a positive int"):
        encode_windows(backbone, images, (2,), stride=0)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        encode_windows(backbone, images[..., :30], (2,))


def test_clip_backbone_encode_windows_is_the_function(backbone, images):
    method = backbone.encode_windows(images, (2,), stride=1)
    function = encode_windows(backbone, images, (2,))
    assert torch.equal(method.windows[0], function.windows[0])
    assert torch.equal(method.patches, function.patches)
