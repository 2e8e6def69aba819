"""Res2CLIP validates its inputs once, under the ``resad_kit.checks`` switch, and runs the ops
unchecked."""

from __future__ import annotations

import inspect

import pytest
import torch

import resad_kit
from resad_kit.clip import ClipBackbone
from resad_kit.methods import Res2CLIP, Res2CLIPConfig, TrainingBatch
from resad_kit.ops import _validation

SIZE = 32


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def features(backbone):
    g = torch.Generator().manual_seed(0)
    return backbone(torch.randn(2, 3, SIZE, SIZE, generator=g)), backbone(
        torch.randn(2, 3, SIZE, SIZE, generator=g)
    )


def _with_nan(feats, layer):
    patches = [p.clone() for p in feats.patches]
    patches[layer][1, 3, 0] = float("nan")
    return feats._replace(patches=patches)


def test_non_finite_features_raise_naming_the_argument(backbone, features):
    """With checks on, a NaN is reported by Res2CLIP with the argument and layer it is in.

    Before, the NaN surfaced inside ``retrieve`` (``retrieve: `query` must be finite``),
    without saying which input or layer held it, and only for the retrieval taps.
    """
    refs, queries = features
    model = Res2CLIP(backbone).fit_references(refs)
    with pytest.raises(ValueError, match=r"Res2CLIP: `inputs.patches\[2\]` must be finite"):
        model(_with_nan(queries, 2))
    cls = queries.cls.clone()
    cls[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"Res2CLIP: `inputs.cls` must be finite"):
        model(queries._replace(cls=cls))
    with pytest.raises(ValueError, match=r"Res2CLIP: `references.patches\[0\]` must be finite"):
        Res2CLIP(backbone).fit_references(_with_nan(refs, 0))
    ft = Res2CLIP(backbone, Res2CLIPConfig.paper("fine_tuned"))
    batch = TrainingBatch(queries, _with_nan(refs, 1), torch.zeros(2, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"Res2CLIP: `batch.reference.patches\[1\]`"):
        ft.losses(batch, "visual")


def test_checks_off_skip_the_screen(backbone, features):
    """``resad_kit.checks(False)`` turns the method's value check off too: invalid input is
    then not reported (here a NaN global feature reaches the global terms)."""
    refs, queries = features
    model = Res2CLIP(backbone).fit_references(refs)
    cls = queries.cls.clone()
    cls[1, 0] = float("nan")
    with resad_kit.checks(False):
        pred = model(queries._replace(cls=cls))
    assert torch.isnan(pred.branches["text"].score[1])
    assert torch.isfinite(pred.branches["text"].score[0])  # the other image is untouched
    with pytest.raises(ValueError, match=r"inputs\.cls"):
        model(queries._replace(cls=cls))


def test_the_ops_run_with_checks_off_and_the_switch_is_restored(backbone, features, monkeypatch):
    """Every op that forward and losses call sees checks off; the caller's state comes back."""
    import resad_kit.methods.res2clip as r
    import resad_kit.methods.res2clip_residuals as rr
    import resad_kit.methods.res2clip_training as rt

    seen = []
    for module in (r, rr, rt):
        for name in dir(module):
            op = getattr(module, name)
            where = getattr(op, "__module__", "") or ""
            if (
                inspect.isfunction(op)
                and where.startswith("resad_kit.ops.")
                and "valid" not in where
            ):

                def spy(*args, _op=op, **kwargs):
                    seen.append((_op.__name__, _validation.checks_enabled()))
                    return _op(*args, **kwargs)

                monkeypatch.setattr(module, name, spy)
    refs, queries = features
    model = Res2CLIP(backbone, Res2CLIPConfig.paper("fine_tuned")).fit_references(refs)
    model(queries)
    model.losses(TrainingBatch(queries, refs, torch.zeros(2, SIZE, SIZE)), "text")
    called = {name for name, _ in seen}
    assert {"retrieve", "visual_residual", "cosine_score", "projection_score"} <= called
    assert {"magnitude_score", "upsample_patches", "fuse", "top_fraction_mean"} <= called
    assert [name for name, on in seen if on] == []
    assert bool(resad_kit.checks())
