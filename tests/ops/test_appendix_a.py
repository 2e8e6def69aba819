"""Appendix A identities of the Res²CLIP paper, checked numerically (A.1–A.4, eqs. 17–29 and 39).

Every identity is evaluated with the library primitives on one side and with an
independent formula (plain torch arithmetic) on the other: on random vectors in
R^768 in float32 (tolerance 1e-5) and, via hypothesis, on small D in float64.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from resad_kit.ops.residuals import global_residual, text_residual, visual_residual
from resad_kit.ops.scores import cosine_score, magnitude_score, projection_score

D = 768
TOL32 = {"rtol": 1e-5, "atol": 1e-5}
TOL64 = {"rtol": 1e-9, "atol": 1e-9}

_ELEMENTS = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False)


def small_vec() -> st.SearchStrategy[np.ndarray]:
    return arrays(np.float64, (5,), elements=_ELEMENTS)


def _nonzero(*xs: torch.Tensor) -> bool:
    return all(float(x.norm()) > 1e-3 for x in xs)


@pytest.fixture
def raw() -> dict[str, torch.Tensor]:
    """Raw (non-unit) CLIP-like features: a batch of queries, references, two anchors."""
    g = torch.Generator().manual_seed(2024)
    shared = torch.randn(D, generator=g)  # anchors share most of their direction, like CLIP's
    return {
        "f": 3.0 * torch.randn(64, D, generator=g),
        "f_ref": 0.5 * torch.randn(64, D, generator=g),
        "Fn": 2.0 * (shared + 0.3 * torch.randn(D, generator=g)),
        "Fa": 7.0 * (shared + 0.3 * torch.randn(D, generator=g)),
    }


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Independent cosine ⟨a, b⟩ = â·b̂."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


# --------------------------------------------------------------------------- A.1 (eqs. 18–22)


def _check_softmax_sigmoid(f: torch.Tensor, fn: torch.Tensor, fa: torch.Tensor, tol: dict) -> None:
    logits = torch.stack([_cos(f, fn.expand_as(f)), _cos(f, fa.expand_as(f))], dim=-1)
    s_text = torch.softmax(logits, dim=-1)[..., 1]  # eq. 18
    r_t = text_residual(fa, fn)
    r_hat = text_residual(fa, fn, unit=True)
    f_hat = F.normalize(f, dim=-1)
    # σ(f̂·R_t) (eq. 20): the plain dot product with the raw text residual
    torch.testing.assert_close(torch.sigmoid((f_hat * r_t).sum(-1)), s_text, **tol)
    # σ(‖R_t‖ ⟨f, R̂_t⟩) (eq. 22), with the library's norm and cosine
    torch.testing.assert_close(
        torch.sigmoid(magnitude_score(r_t) * cosine_score(f, r_hat)), s_text, **tol
    )
    # f̂·R_t = ‖R_t‖ · (f̂ · R̂_t): the projection of f̂ onto the text direction (eq. 21)
    torch.testing.assert_close(
        torch.sigmoid(magnitude_score(r_t) * projection_score(f_hat, r_t)), s_text, **tol
    )


def test_a1_softmax_equals_sigmoid_of_text_residual_768(raw: dict[str, torch.Tensor]) -> None:
    _check_softmax_sigmoid(raw["f"], raw["Fn"], raw["Fa"], TOL32)


@given(f=small_vec(), fn=small_vec(), fa=small_vec())
def test_a1_softmax_equals_sigmoid_small_d(f: np.ndarray, fn: np.ndarray, fa: np.ndarray) -> None:
    tf, tn, ta = (torch.from_numpy(x) for x in (f, fn, fa))
    assume(_nonzero(tf, tn, ta) and float(text_residual(ta, tn).norm()) > 1e-3)
    _check_softmax_sigmoid(tf, tn, ta, TOL64)


def test_a1_ranking_invariance(raw: dict[str, torch.Tensor]) -> None:
    # A.1 remark: ordering queries by S_text equals ordering them by ⟨f, R̂_t⟩
    f = raw["f"].double()
    fn, fa = raw["Fn"].double(), raw["Fa"].double()
    logits = torch.stack([_cos(f, fn.expand_as(f)), _cos(f, fa.expand_as(f))], dim=-1)
    s_text = torch.softmax(logits, dim=-1)[:, 1]
    align = cosine_score(f, text_residual(fa, fn))
    assert torch.equal(torch.argsort(s_text), torch.argsort(align))


# --------------------------------------------------------------------------- A.2 (eq. 23)


def _check_visual_half_squared(f: torch.Tensor, f_ref: torch.Tensor, tol: dict) -> None:
    r_v = visual_residual(f, f_ref)
    mag = magnitude_score(r_v)
    cos = _cos(f, f_ref)
    torch.testing.assert_close(mag**2, 2 * (1 - cos), **tol)  # ‖R_v‖² = 2(1 − cos)
    torch.testing.assert_close(1 - cosine_score(f, f_ref), 0.5 * mag**2, **tol)  # S_vis = ½‖R_v‖²
    assert bool((mag >= 0).all())
    assert bool((mag <= 2 + 1e-6).all())


def test_a2_visual_score_is_half_squared_residual_768(raw: dict[str, torch.Tensor]) -> None:
    _check_visual_half_squared(raw["f"], raw["f_ref"], TOL32)
    # ‖R_v‖ ranks patches like 1 − cos
    r = magnitude_score(visual_residual(raw["f"].double(), raw["f_ref"].double()))
    assert torch.equal(torch.argsort(r), torch.argsort(1 - _cos(raw["f"], raw["f_ref"]).double()))


@given(f=small_vec(), f_ref=small_vec())
def test_a2_visual_half_squared_small_d(f: np.ndarray, f_ref: np.ndarray) -> None:
    tf, tr = torch.from_numpy(f), torch.from_numpy(f_ref)
    assume(_nonzero(tf, tr))
    _check_visual_half_squared(tf, tr, TOL64)


# --------------------------------------------------------------------------- A.3–A.4 (eqs. 24–29)


def _check_projection_identities(
    f: torch.Tensor, f_ref: torch.Tensor, fn: torch.Tensor, fa: torch.Tensor, tol: dict
) -> None:
    r_t = text_residual(fa, fn)
    r_v = visual_residual(f, f_ref)
    proj = projection_score(r_v, r_t)
    # eqs. 24–27: ⟨f_q, R_t⟩ − ⟨f_ref, R_t⟩ = f̂_q·R̂_t − f̂_ref·R̂_t = R_v·R̂_t
    calibrated = cosine_score(f, r_t) - cosine_score(f_ref, r_t)
    torch.testing.assert_close(calibrated, proj, **tol)
    r_hat = r_t / r_t.norm()
    f_hat, f_ref_hat = F.normalize(f, dim=-1), F.normalize(f_ref, dim=-1)
    by_hand = (f_hat * r_hat).sum(-1) - (f_ref_hat * r_hat).sum(-1)
    torch.testing.assert_close(proj, by_hand, **tol)
    # eq. 28: cos(R_v, R_t) = (R_v·R̂_t) / ‖R_v‖
    mag = magnitude_score(r_v)
    torch.testing.assert_close(cosine_score(r_v, r_t), proj / mag, **tol)
    # eqs. 29 / 39: |R_v·R̂_t| ≤ ‖R_v‖ ≤ 2 for unit-normalised inputs
    assert bool((proj.abs() <= mag * (1 + tol["rtol"]) + tol["atol"]).all())
    assert bool((proj.abs() <= 2 + tol["atol"]).all())


def test_a3_a4_projection_identities_768(raw: dict[str, torch.Tensor]) -> None:
    _check_projection_identities(raw["f"], raw["f_ref"], raw["Fn"], raw["Fa"], TOL32)


@given(f=small_vec(), f_ref=small_vec(), fn=small_vec(), fa=small_vec())
def test_a3_a4_projection_identities_small_d(
    f: np.ndarray, f_ref: np.ndarray, fn: np.ndarray, fa: np.ndarray
) -> None:
    tf, tr, tn, ta = (torch.from_numpy(x) for x in (f, f_ref, fn, fa))
    assume(_nonzero(tf, tr, tn, ta))
    assume(float(text_residual(ta, tn).norm()) > 1e-3)
    assume(float(visual_residual(tf, tr).norm()) > 1e-3)
    _check_projection_identities(tf, tr, tn, ta, TOL64)


def test_a4_projection_vanishes_but_cosine_does_not(raw: dict[str, torch.Tensor]) -> None:
    # eq. 29: as f_ref → f, R_v·R̂_t → 0 linearly, while cos(R_v, R_t) stays O(1)
    f = raw["f"][0].double()
    noise = torch.randn(D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    r_t = text_residual(raw["Fa"].double(), raw["Fn"].double())
    noise = noise + 5 * r_t  # make the perturbation point (partly) along R_t
    projs, cosines = [], []
    for t in (1e-1, 1e-2, 1e-3, 1e-4):
        r_v = visual_residual(f + t * noise, f)
        projs.append(abs(float(projection_score(r_v, r_t))))
        cosines.append(abs(float(cosine_score(r_v, r_t))))
    assert projs[-1] < 1e-3 * projs[0] * 10  # shrinks roughly ∝ t
    assert all(a > b for a, b in itertools.pairwise(projs))
    assert min(cosines) > 0.1  # the direction (cosine) does not vanish
    assert math.isclose(cosines[-1], cosines[-2], rel_tol=1e-2)


def test_a4_upper_bound_equality_for_parallel_residual(raw: dict[str, torch.Tensor]) -> None:
    # eq. 39: R_v·R̂_t ≤ ‖R_v‖ with equality iff R_v ∥ R_t with positive orientation
    r_t = text_residual(raw["Fa"], raw["Fn"])
    r_v = 0.3 * r_t
    torch.testing.assert_close(projection_score(r_v, r_t), magnitude_score(r_v), **TOL32)
    torch.testing.assert_close(projection_score(-r_v, r_t), -magnitude_score(r_v), **TOL32)


# ------------------------------------------------------ text residual norm (eq. 17, A.1)


def test_text_residual_norm_identity(raw: dict[str, torch.Tensor]) -> None:
    r_t = text_residual(raw["Fa"], raw["Fn"])
    cos = _cos(raw["Fa"], raw["Fn"])
    torch.testing.assert_close(magnitude_score(r_t) ** 2, 2 - 2 * cos, **TOL32)


@given(fn=small_vec(), fa=small_vec())
def test_text_residual_norm_identity_small_d(fn: np.ndarray, fa: np.ndarray) -> None:
    tn, ta = torch.from_numpy(fn), torch.from_numpy(fa)
    assume(_nonzero(tn, ta))
    torch.testing.assert_close(
        magnitude_score(text_residual(ta, tn)) ** 2, 2 - 2 * _cos(ta, tn), **TOL64
    )


# ---------------------------------------- identical query and reference (eqs. 23, 26)


def test_identical_query_and_reference_give_zero(raw: dict[str, torch.Tensor]) -> None:
    f = raw["f"]
    r_t = text_residual(raw["Fa"], raw["Fn"])
    r_v = visual_residual(f, 2.0 * f)  # same direction, different scale
    torch.testing.assert_close(r_v, torch.zeros_like(f), **TOL32)
    torch.testing.assert_close(magnitude_score(r_v), torch.zeros(64), **TOL32)  # visual score
    proj = projection_score(r_v, r_t)  # residual-branch score
    torch.testing.assert_close(proj, torch.zeros(64), **TOL32)
    torch.testing.assert_close(proj.clamp_min(0), torch.zeros(64), **TOL32)  # clamped (code)
    exact = visual_residual(f, f.clone())
    assert torch.equal(exact, torch.zeros_like(f))
    assert torch.equal(magnitude_score(exact), torch.zeros(64))
    assert torch.equal(projection_score(exact, r_t), torch.zeros(64))
    # global residual: the query among K identical references
    refs = torch.stack([f[0], 3.0 * f[0], 0.5 * f[0]])
    torch.testing.assert_close(global_residual(f[0], refs), torch.zeros(D), **TOL32)
    torch.testing.assert_close(
        global_residual(f[0], f[0].expand(2, D), normalized=False), torch.zeros(D), rtol=0, atol=0
    )
