"""WinCLIP / WinCLIP+ (resad_kit.methods.winclip): anomalib's computation, composition, engine.

``_anomalib_forward`` re-derives anomalib's ``WinClipModel.forward`` (torch_model.py,
utils.py) from open_clip's own modules, written here independently of the library: the
token map captured at ``patch_dropout`` (a test-only forward hook), windows selected by
``index_select`` and run batch-first through open_clip's ``transformer``, the two-class
softmax of cosine similarities, harmonic aggregation by a loop over patches, the
visual association score as ``min(1 − cos)/2``, the multi-scale fusion and bilinear
upsampling. The tiny backbone runs at its native 32 px (4×4 grid) so that open_clip's own
forward applies.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resad_kit.clip import ClipBackbone, encode_prompt_ensemble
from resad_kit.clip.windows import WindowBackbone, encode_windows
from resad_kit.data import AnomalyDataset, sample_references, synthesize_dataset
from resad_kit.engine import DatasetSpec, FeatureCache, run_evaluation, write_results
from resad_kit.methods import Method, Res2CLIP, WinCLIP, WinCLIPConfig
from resad_kit.metrics import evaluate
from resad_kit.ops import cosine_score, harmonic_aggregate, knn_distance, upsample_patches

TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=5, image_size=32)


def _images(seed: int, n: int, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)


def _harmonic_loop(scores: torch.Tensor, masks: torch.Tensor, n: int) -> torch.Tensor:
    """anomalib's harmonic_aggregation: per patch, count / Σ 1/score of covering windows."""
    out = []
    for idx in range(n):
        covering = (masks == idx).any(dim=0)  # masks: (s², W)
        out.append(covering.sum() / (1 / scores.T[covering]).sum(dim=0))
    return torch.stack(out).T.nan_to_num(posinf=0.0)


def _anomalib_forward(backbone, images, references, class_name, scales=(2, 3)):
    visual, clip = backbone.model.visual, backbone.model
    h = w = 4
    masks = [
        F.unfold(torch.arange(h * w).reshape(1, h, w).float(), kernel_size=s).long() for s in scales
    ]

    def encode(batch):
        captured = {}
        hook = visual.patch_dropout.register_forward_hook(
            lambda _m, i, _o: captured.__setitem__("map", i[0])
        )
        visual.output_tokens = True
        try:
            image, tokens = visual(batch)
        finally:
            visual.output_tokens = False
            hook.remove()
        fmap, windows = captured["map"], []
        for m in masks:
            rows = torch.cat([torch.zeros(1, m.shape[1], dtype=torch.long), m + 1]).T
            x = torch.cat([torch.index_select(fmap, 1, r) for r in rows])  # mask-major
            x = visual.ln_post(visual.transformer(visual.ln_pre(x)))[:, 0] @ visual.proj
            windows.append(x.reshape(m.shape[1], batch.shape[0], -1).permute(1, 0, 2))
        return image, windows, tokens

    sets = WinCLIPConfig.anomalib().prompt_ensemble().build(class_name)
    tok = backbone.tokenizer
    text = torch.cat(
        [clip.encode_text(tok(list(p))).mean(0, keepdim=True) for p in sets]
    )  # (2, D): normal, anomalous

    def class_score(x):
        return (_cos(x, text) / 0.07).softmax(-1)[..., 1]

    with torch.no_grad():
        image, windows, tokens = encode(images)
        image_score = class_score(image)
        maps = [image_score.view(-1, 1).repeat(1, h * w)]
        maps += [
            _harmonic_loop(class_score(win), m, h * w)
            for win, m in zip(windows, masks, strict=True)
        ]
        zero = (len(scales) + 1) / (1 / torch.stack(maps)).sum(0)
        score, fused = image_score, zero
        if references is not None:
            _, ref_windows, ref_tokens = encode(references)

            def association(x, ref):
                return (1 - _cos(x, ref.reshape(-1, x.shape[-1]))).min(-1)[0] / 2

            few = [association(tokens, ref_tokens)]
            few += [
                _harmonic_loop(association(win, ref), m, h * w)
                for win, ref, m in zip(windows, ref_windows, masks, strict=True)
            ]
            few = torch.stack(few).mean(0)
            fused, score = (zero + few) / 2, (image_score + few.amax(-1)) / 2
        pixels = F.interpolate(fused.reshape(-1, 1, h, w), size=images.shape[-2:], mode="bilinear")
    return score, pixels[:, 0]


@pytest.mark.parametrize("shots", [0, 2])
def test_anomalib_preset_reproduces_anomalibs_winclipmodel(backbone, shots):
    images, refs = _images(0, 3), _images(1, shots) if shots else None
    model = WinCLIP(backbone, WinCLIPConfig.anomalib(class_name="bottle"))
    if refs is not None:
        model.fit_references(refs)
    pred = model(images)
    score, pixels = _anomalib_forward(backbone, images, refs, "bottle")
    torch.testing.assert_close(pred.image_score, score, **TOL)
    torch.testing.assert_close(pred.anomaly_map, pixels, **TOL)
    assert float(pred.anomaly_map.std()) > 0  # not the flat map of anomalib issue #2571


def test_direct_composition_on_the_tiny_backbone():
    """At 64 px (interpolated positions, 8×8 grid): the method is encode_windows + the ops."""
    backbone = ClipBackbone.tiny(seed=2)
    config = WinCLIPConfig.paper(class_name="tile", temperature=0.5)
    images, refs = _images(3, 2, 64), _images(4, 2, 64)
    model = WinCLIP(backbone, config)
    e, r = encode_windows(backbone, images, (2, 3)), encode_windows(backbone, refs, (2, 3))
    anchors = encode_prompt_ensemble(backbone, "tile", ensemble=config.prompt_ensemble())

    def p(x):  # Eq. 1 as the two-class softmax
        logits = torch.stack([cosine_score(x, anchors.normal), cosine_score(x, anchors.anomalous)])
        return (logits / 0.5).softmax(0)[1]

    grid, n = (8, 8), 64
    per_scale = [p(e.image)[:, None, None].expand(-1, 8, 8)]
    per_scale += [
        harmonic_aggregate(p(w), i, grid) for w, i in zip(e.windows, e.indices, strict=True)
    ]
    zero = len(per_scale) / sum(1 / m for m in per_scale)
    few = [knn_distance(e.patches, r.patches.flatten(0, 1))[..., 0].reshape(2, 8, 8)]
    few += [
        harmonic_aggregate(knn_distance(w, rw.flatten(0, 1))[..., 0], i, grid)
        for w, rw, i in zip(e.windows, r.windows, e.indices, strict=True)
    ]
    few = sum(few) / 3
    expected_map = upsample_patches(((zero + few) / 2).reshape(2, n), (64, 64), grid)
    expected_score = (p(e.image) + few.flatten(1).amax(1)) / 2

    pred = model.fit_references(refs)(images, return_intermediates=True)
    torch.testing.assert_close(pred.anomaly_map, expected_map, **TOL)
    torch.testing.assert_close(pred.image_score, expected_score, **TOL)
    torch.testing.assert_close(pred.intermediates["zero_shot_grid"], zero, **TOL)
    torch.testing.assert_close(pred.intermediates["few_shot_grid"], few, **TOL)
    torch.testing.assert_close(pred.branches["few_shot"].score, few.flatten(1).amax(1), **TOL)
    assert float(zero.std()) > 0
    assert float(few.std()) > 0


def test_zero_shot_after_clear_references(backbone):
    images = _images(5, 2)
    fresh = WinCLIP(backbone)(images)
    model = WinCLIP(backbone).fit_references(_images(6, 1))
    assert model.k_shot == 1
    assert not torch.allclose(model(images).anomaly_map, fresh.anomaly_map)
    zero = model.clear_references()(images)
    assert model.k_shot == 0
    assert torch.equal(zero.anomaly_map, fresh.anomaly_map)
    assert list(zero.branches) == ["zero_shot"]
    assert isinstance(model, Method)
    assert model.mode == "training_free"


def test_cached_window_features_give_the_image_predictions(backbone):
    packed = WindowBackbone.wrap(backbone)
    images, refs = _images(7, 2), _images(8, 2)
    from_images = WinCLIP(packed).fit_references(refs)(images)
    from_features = WinCLIP(packed).fit_references(packed(refs))(packed(images))
    torch.testing.assert_close(from_features.anomaly_map, from_images.anomaly_map, **TOL)
    torch.testing.assert_close(from_features.image_score, from_images.image_score, **TOL)
    with pytest.raises(ValueError, match="Features inputs must come from a WindowBackbone"):
        WinCLIP(backbone)(backbone(images))
    with pytest.raises(ValueError, match="config's scales"):
        WinCLIP(packed, WinCLIPConfig(scales=(2,)))(packed(images))


def test_config_presets_and_errors(backbone):
    anomalib, paper = WinCLIPConfig.anomalib(), WinCLIPConfig.paper()
    assert anomalib.prompt_ensemble().templates.count("a jpeg corrupted photo of the {}.") == 2
    assert paper.prompt_ensemble().templates.count("a jpeg corrupted photo of a {}.") == 1
    assert WinCLIPConfig.from_dict(paper.to_dict()) == paper
    a = WinCLIP(backbone, anomalib).text_anchors()
    b = WinCLIP(backbone, paper).text_anchors()
    assert not torch.allclose(a.normal, b.normal)
    backbone_config = WinCLIPConfig.backbone_config()
    assert (backbone_config.image_size, backbone_config.vv_blocks) == (240, 0)
    for bad, match in [
        ({"scales": ()}, "`scales` must be a non-empty tuple"),
        ({"scales": (2, 2)}, "must not repeat"),
        ({"temperature": 0.0}, "invalid `temperature`"),
        ({"class_name": " "}, "invalid `class_name`"),
        ({"prompts": "x"}, "`prompts` must be"),
        ({"patch_layer": 0}, "invalid `patch_layer`"),
    ]:
        with pytest.raises(ValueError, match=match):
            WinCLIPConfig(**bad)
    with pytest.raises(ValueError, match="unknown fields"):
        WinCLIPConfig.from_dict({"k": 1})
    with pytest.raises(ValueError, match="the backbone has 4 blocks"):
        WinCLIP(backbone, WinCLIPConfig(patch_layer=5))
    with pytest.raises(TypeError, match="must be a WinCLIPConfig"):
        WinCLIP(backbone, {"scales": (2,)})


def test_runs_through_the_protocol_beside_res2clip(tmp_path):
    """Zero-shot and 1-shot rows through run_evaluation (cached window features) with the
    metrics of a direct forward + evaluate, in the same table.md as a Res2CLIP run."""
    root = synthesize_dataset(tmp_path / "data", ["grass"], n_train=2, n_test=4, image_size=32)
    plain = ClipBackbone.tiny(image_size=32)
    packed = WindowBackbone.wrap(plain)
    spec = [DatasetSpec("synth", root, ("grass",))]
    winclip = run_evaluation(
        {("training_free", "synth"): WinCLIP(packed)},
        spec,
        FeatureCache(packed, progress=False),
        shots=(0, 1),
        seeds=(0,),
        progress=False,
    )
    assert [(r.method, r.shots, r.mode) for r in winclip] == [
        ("winclip", 0, "training_free"),
        ("winclip", 1, "training_free"),
    ]
    test = AnomalyDataset(root, "grass", "test", 32)
    refs = sample_references(AnomalyDataset(root, "grass", "train", 32), 1, seed=0)
    images = test.images(list(range(len(test))))
    masks = torch.stack([test[i]["mask"][0] for i in range(len(test))])
    with torch.no_grad():
        zero = WinCLIP(plain)(images)
        few = WinCLIP(plain).fit_references(refs.images)(images)
    for result, pred in zip(winclip, (zero, few), strict=True):
        expected = evaluate(pred.image_score, pred.anomaly_map, torch.tensor(test.labels), masks)
        assert result.metrics == pytest.approx(expected, abs=1e-5), result.shots
    assert winclip[0].references == ()
    assert winclip[1].references == refs.paths
    res2clip = run_evaluation(
        {("training_free", "synth"): Res2CLIP(plain)},
        spec,
        FeatureCache(plain, progress=False),
        shots=(1,),
        seeds=(0,),
        progress=False,
    )
    table = write_results(
        winclip + res2clip, tmp_path / "out", backbone_label="tiny", trained=False, config={}
    )
    text = table["table"].read_text()
    assert "Res²CLIP" in text[: text.index("## WinCLIP")]
    block = text[text.index("## WinCLIP") :]
    for result in winclip:
        assert f"| {result.shots} | synth | {100 * result.metrics['I-AUROC']:.1f} |" in block
