"""Sliding windows and harmonic aggregation (resad_kit.ops.harmonic; WinCLIP Sec. 3.3).

References written here, independently of the library: windows listed by two loops over
the top-left corners, anomalib's ``make_masks`` formulation (``F.unfold`` of the index
grid), and the per-patch harmonic mean by a loop over patches and windows in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

import resad_kit
from resad_kit.ops import harmonic_aggregate, window_indices


def _naive_windows(h: int, w: int, s: int, t: int) -> list[list[int]]:
    return [
        [(y0 + a) * w + (x0 + b) for a in range(s) for b in range(s)]
        for y0 in range(0, h - s + 1, t)
        for x0 in range(0, w - s + 1, t)
    ]


def _naive_harmonic(scores: torch.Tensor, windows: list[list[int]], h: int, w: int):
    """(B, W) → (B, h, w): for each patch, the harmonic mean of its covering windows."""
    out = torch.zeros(scores.shape[0], h * w, dtype=torch.float64)
    for b in range(scores.shape[0]):
        for p in range(h * w):
            covering = [float(scores[b, i]) for i, win in enumerate(windows) if p in win]
            if covering and all(c > 0 for c in covering):
                out[b, p] = len(covering) / sum(1.0 / c for c in covering)
    return out.reshape(-1, h, w)


grids = st.tuples(st.integers(1, 7), st.integers(1, 7))


@given(grid=grids, size=st.integers(1, 4), stride=st.integers(1, 3))
def test_window_indices_match_the_loop_and_anomalibs_unfold(grid, size, stride):
    h, w = grid
    if size > min(h, w):
        with pytest.raises(ValueError, match=r"`size`=.* does not fit the grid"):
            window_indices(grid, size, stride)
        return
    got = window_indices(grid, size, stride)
    assert got.dtype == torch.int64
    assert got.tolist() == _naive_windows(h, w, size, stride)
    index_grid = torch.arange(h * w, dtype=torch.float64).reshape(1, h, w)
    unfold = F.unfold(index_grid, kernel_size=size, stride=stride).long()  # (s², W)
    assert torch.equal(got, unfold.T)


def test_winclip_window_counts():
    # ViT-B/16+ at 240 px: a 15×15 grid, 196 windows of 2×2 and 169 of 3×3.
    assert window_indices((15, 15), 2).shape == (196, 4)
    assert window_indices((15, 15), 3).shape == (169, 9)


@given(
    grid=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    size=st.integers(1, 3),
    stride=st.integers(1, 2),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_harmonic_aggregate_is_the_naive_loop_and_bounded(grid, size, stride, batch, seed):
    h, w = grid
    if size > min(h, w):
        return
    windows = window_indices(grid, size, stride)
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, len(windows), generator=g, dtype=torch.float64) + 0.05
    got = harmonic_aggregate(scores, windows, grid)
    expected = _naive_harmonic(scores, _naive_windows(h, w, size, stride), h, w)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # bounds: between the smallest and the largest score of the covering windows
    cover = torch.zeros(len(windows), h * w, dtype=torch.bool)
    cover.scatter_(1, windows, True)
    flat = got.reshape(batch, -1)
    for p in range(h * w):
        if cover[:, p].any():
            covering = scores[:, cover[:, p]]
            assert bool((flat[:, p] >= covering.amin(1) - 1e-12).all())
            assert bool((flat[:, p] <= covering.amax(1) + 1e-12).all())
        else:  # stride > 1 can leave a patch uncovered: 0
            assert bool((flat[:, p] == 0).all())


@given(grid=grids, value=st.floats(0.01, 10.0))
def test_a_window_covering_everything_gives_its_score_everywhere(grid, value):
    h, w = grid
    whole = torch.arange(h * w)[None]  # one window holding every patch
    out = harmonic_aggregate(torch.tensor([[value]], dtype=torch.float64), whole, grid)
    expected = torch.full((1, h, w), value, dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-15, atol=0)  # 1 / (1 / v)
    # equal scores: the harmonic mean of equal numbers is that number
    if min(h, w) >= 2:
        windows = window_indices(grid, 2)
        scores = torch.full((2, len(windows)), value, dtype=torch.float64)
        torch.testing.assert_close(
            harmonic_aggregate(scores, windows, grid),
            torch.full((2, h, w), value, dtype=torch.float64),
            rtol=1e-12,
            atol=0,
        )


def test_zero_score_and_uncovered_patches_give_zero():
    windows = window_indices((3, 3), 2)  # windows 0..3; patch 4 is in all of them
    out = harmonic_aggregate(torch.tensor([[0.0, 1.0, 1.0, 1.0]]), windows, (3, 3))
    assert out[0, 0, 0] == 0  # covered by the zero window
    assert out[0, 1, 1] == 0
    assert out[0, 0, 2] == 1  # covered by window 1 only
    assert not torch.isnan(out).any()
    one = torch.tensor([[0]])  # a single window over patch 0 leaves the others uncovered
    torch.testing.assert_close(
        harmonic_aggregate(torch.tensor([[0.5]]), one, (2, 2)),
        torch.tensor([[[0.5, 0.0], [0.0, 0.0]]]),
    )


def test_hand_computed_example():
    # scores 1, 2, 3, 4 of the four 2×2 windows of a 3×3 grid
    out = harmonic_aggregate(
        torch.tensor([[1.0, 2.0, 3.0, 4.0]]), window_indices((3, 3), 2), (3, 3)
    )
    expected = torch.tensor(
        [
            [1.0, 2 / (1 + 1 / 2), 2.0],
            [2 / (1 + 1 / 3), 4 / (1 + 1 / 2 + 1 / 3 + 1 / 4), 2 / (1 / 2 + 1 / 4)],
            [3.0, 2 / (1 / 3 + 1 / 4), 4.0],
        ]
    )
    torch.testing.assert_close(out, expected[None])


def test_gradcheck_float64():
    windows = window_indices((4, 3), 2)
    scores = torch.rand(2, len(windows), dtype=torch.float64) + 0.1
    assert gradcheck(lambda s: harmonic_aggregate(s, windows, (4, 3)), (scores.requires_grad_(),))


def test_half_inputs_compute_in_float32():
    windows = window_indices((4, 4), 2)
    scores = torch.rand(1, len(windows)) + 0.1
    out = harmonic_aggregate(scores.half(), windows, (4, 4))
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out, harmonic_aggregate(scores.half().float(), windows, (4, 4)), rtol=0, atol=0
    )


def test_errors():
    windows = window_indices((3, 3), 2)
    good = torch.ones(1, 4)
    with pytest.raises(ValueError, match="`window_scores` must have 2 dimensions"):
        harmonic_aggregate(torch.ones(4), windows, (3, 3))
    with pytest.raises(ValueError, match="`windows` has 4 windows but `window_scores` scores 3"):
        harmonic_aggregate(torch.ones(1, 3), windows, (3, 3))
    with pytest.raises(ValueError, match="`windows` must hold integer patch indices"):
        harmonic_aggregate(good, windows.float(), (3, 3))
    with pytest.raises(ValueError, match="`window_scores` must be finite and ≥ 0"):
        harmonic_aggregate(-good, windows, (3, 3))
    with pytest.raises(ValueError, match=r"indices outside \[0, 4\)"):
        harmonic_aggregate(good, windows, (2, 2))
    with pytest.raises(ValueError, match="`grid` must be a pair of positive ints"):
        harmonic_aggregate(good, windows, (3,))
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        window_indices((3, 3), 0)
    with pytest.raises(ValueError, match="`stride` must be a positive int"):
        window_indices((3, 3), 2, 0)
    with resad_kit.checks(False):  # unchecked: no value check runs
        harmonic_aggregate(-good, windows, (3, 3))
