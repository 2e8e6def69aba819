"""Float parameters of the primitives accept numpy scalars (``np.float32``, ``np.int64``...).

A value read from a numpy array or a config computed with numpy is a numpy scalar; before
the fix ``retrieve(..., gamma=np.float32(0.01))`` and the other float checks raised. Each
test compares with the same call given the equal Python number, and checks that bools
(Python or numpy) are still rejected.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resad_kit.methods.res2clip_losses import residual_branch_loss, text_branch_loss
from resad_kit.ops import global_residual, radial_distance, radial_penalty, retrieve
from resad_kit.ops.losses import binary_focal_loss, dice_loss, global_hinge_loss

SCALARS = [np.float32, np.float64, np.float16]


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "query": torch.randn(16, 8, generator=g),
        "bank": torch.randn(32, 8, generator=g),
        "probs": torch.rand(2, 4, 4, generator=g),
        "targets": (torch.rand(2, 4, 4, generator=g) > 0.5).float(),
    }


@pytest.mark.parametrize("scalar", [*SCALARS, np.int64])
def test_retrieve_and_radial_penalty_take_numpy_gamma(data, scalar):
    r = radial_distance(4, 4)
    value = 0 if scalar is np.int64 else 0.5
    plain = retrieve(
        data["query"], data["bank"], query_radius=r, bank_radius=r.repeat(2), gamma=value
    )
    numpy = retrieve(
        data["query"], data["bank"], query_radius=r, bank_radius=r.repeat(2), gamma=scalar(value)
    )
    assert torch.equal(numpy.reference, plain.reference)
    assert torch.equal(radial_penalty(r, r, scalar(value)), radial_penalty(r, r, value))


@pytest.mark.parametrize("bad", [True, np.bool_(True), np.float32("nan"), np.int64(-1)])
def test_gamma_still_rejects_bools_and_bad_values(data, bad):
    with pytest.raises(ValueError, match="gamma"):
        retrieve(data["query"], data["bank"], gamma=bad)


@pytest.mark.parametrize("scalar", SCALARS)
def test_segmentation_losses_take_numpy_parameters(data, scalar):
    p, y = data["probs"], data["targets"]
    assert torch.equal(
        binary_focal_loss(p, y, gamma=scalar(2.0), alpha=scalar(0.25)),
        binary_focal_loss(p, y, gamma=2.0, alpha=0.25),
    )
    assert torch.equal(binary_focal_loss(p, y, gamma=np.int64(2)), binary_focal_loss(p, y, gamma=2))
    assert torch.equal(dice_loss(p, y, smooth=scalar(0.5)), dice_loss(p, y, smooth=0.5))
    with pytest.raises(ValueError, match="gamma"):
        binary_focal_loss(p, y, gamma=np.bool_(True))


@pytest.mark.parametrize("scalar", SCALARS)
def test_hinge_losses_take_numpy_margin_and_target(scalar):
    labels = torch.tensor([0.0, 1.0])
    scores = torch.tensor([0.2, 0.3])
    assert torch.equal(
        global_hinge_loss(scores, labels, target=scalar(0.5)),
        global_hinge_loss(scores, labels, target=0.5),
    )
    mask = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    local = torch.tensor([[0.1, -0.2], [0.0, 0.6]])
    r_t = torch.tensor([1.0, 0.0])
    assert torch.equal(
        text_branch_loss(scores, [local], r_t, r_t, labels, mask, margin=scalar(0.5)),
        text_branch_loss(scores, [local], r_t, r_t, labels, mask, margin=0.5),
    )
    reg = torch.tensor(0.0)
    raw = torch.tensor([0.3, 0.9])
    assert torch.equal(
        residual_branch_loss(
            scores, raw, [local], [local.abs()], labels, mask, regularizer=reg, margin=scalar(0.5)
        ),
        residual_branch_loss(
            scores, raw, [local], [local.abs()], labels, mask, regularizer=reg, margin=0.5
        ),
    )
    with pytest.raises(TypeError, match="margin"):
        text_branch_loss(scores, [local], r_t, r_t, labels, mask, margin=np.bool_(True))


@pytest.mark.parametrize("scalar", SCALARS)
def test_residual_eps_takes_numpy_scalars(scalar):
    q, refs = torch.randn(3, 8), torch.randn(3, 2, 8)
    assert torch.equal(global_residual(q, refs, eps=scalar(0.5)), global_residual(q, refs, eps=0.5))
    with pytest.raises(TypeError, match="eps"):
        global_residual(q, refs, eps=np.bool_(True))
