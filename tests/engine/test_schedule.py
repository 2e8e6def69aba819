"""Tests of the training schedule (resad_kit.engine.schedule; paper App. F.2,
hito2448/Res2CLIP `train.py`)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from resad_kit.engine.schedule import (
    WarmupCosine,
    active_epochs,
    phase_of_epoch,
    warmup_cosine,
    warmup_cosine_scheduler,
)


def test_phase_alternates_starting_with_visual():
    # App. F.2 read 0-based, as hito2448/Res2CLIP `train.py` does (``epoch % 2 == 0``):
    # even epochs train the residual visual adapters.
    assert [phase_of_epoch(e) for e in range(10)] == ["visual", "text"] * 5


@given(st.integers(0, 60))
def test_active_epochs_split_the_epochs(epochs):
    visual, text = active_epochs(epochs, {"visual"}), active_epochs(epochs, {"text"})
    assert visual == math.ceil(epochs / 2)  # the official code's ceil(epochs / 2)
    assert text == epochs // 2
    assert visual + text == epochs == active_epochs(epochs, ["visual", "text"])


@given(st.integers(1, 40), st.integers(0, 100))
def test_warmup_is_linear_from_zero(warmup, extra):
    total = warmup + extra
    for step in range(warmup):
        assert warmup_cosine(step, warmup, total) == pytest.approx(step / warmup, abs=1e-12)
    assert warmup_cosine(0, warmup, total) == 0.0  # the first step runs at lr 0
    assert warmup_cosine(warmup, warmup, total) == 1.0


@given(st.integers(0, 20), st.integers(1, 60))
def test_decay_equals_torch_cosine_annealing(warmup, decay):
    # Independent reference: torch's CosineAnnealingLR (eta_min 0) over the decay steps.
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=decay)
    for t in range(decay + 1):
        expected = opt.param_groups[0]["lr"]
        assert warmup_cosine(warmup + t, warmup, warmup + decay) == pytest.approx(
            expected, abs=1e-9
        )
        opt.step()
        cosine.step()


@given(st.integers(0, 20), st.integers(0, 60))
def test_factor_is_bounded_monotone_after_warmup_and_zero_at_the_end(warmup, extra):
    total = warmup + extra
    factors = [warmup_cosine(s, warmup, total) for s in range(total + 5)]
    assert all(0.0 <= f <= 1.0 for f in factors)
    after = factors[warmup:]
    assert all(a >= b for a, b in itertools.pairwise(after))
    assert factors[-1] == 0.0  # past the total the lr stays 0 (no second cosine lobe)


def test_no_warmup_starts_at_full_lr():
    assert warmup_cosine(0, 0, 10) == 1.0


def test_scheduler_counts_only_its_own_steps():
    """An optimiser stepped in odd epochs only follows the same curve as a contiguous one."""
    steps, epochs, base = 3, 4, 1e-3
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    every = torch.optim.Adam([params[0]], lr=base)
    odd = torch.optim.Adam([params[1]], lr=base)
    sched_every = warmup_cosine_scheduler(every, steps, steps * epochs)
    total_odd = steps * active_epochs(epochs, {"text"})
    sched_odd = warmup_cosine_scheduler(odd, steps, total_odd)
    lrs_every, lrs_odd = [], []
    for epoch in range(epochs):
        for _ in range(steps):
            lrs_every.append(every.param_groups[0]["lr"])
            every.step()
            sched_every.step()
            if phase_of_epoch(epoch) == "text":
                lrs_odd.append(odd.param_groups[0]["lr"])
                odd.step()
                sched_odd.step()
    assert lrs_every == pytest.approx([base * warmup_cosine(s, 3, 12) for s in range(12)])
    # The odd-epoch optimiser warms up in its first active epoch, then decays over 6 steps.
    assert lrs_odd == pytest.approx([base * warmup_cosine(s, 3, total_odd) for s in range(6)])
    assert lrs_odd[:4] == pytest.approx([0.0, base / 3, 2 * base / 3, base])


def test_scheduler_state_round_trip_keeps_the_curve():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([w], lr=1.0)
    sched = warmup_cosine_scheduler(opt, 2, 10)
    for _ in range(4):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state["lr_lambdas"] == [{"warmup_steps": 2, "total_steps": 10}]

    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    opt2.load_state_dict(opt.state_dict())
    sched2 = warmup_cosine_scheduler(opt2, 0, 1)  # other settings: restored from the state
    sched2.load_state_dict(state)
    for _ in range(3):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert repr(sched2.lr_lambdas[0]) == "WarmupCosine(warmup_steps=2, total_steps=10)"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: warmup_cosine(-1, 1, 2), "`step`"),
        (lambda: warmup_cosine(0, 1.5, 2), "`warmup_steps`"),
        (lambda: WarmupCosine(1, -2), "`total_steps`"),
        (lambda: phase_of_epoch(True), "`epoch`"),
        (lambda: active_epochs(4, {"residual"}), "`phases`"),
        (lambda: active_epochs(4, set()), "`phases`"),
        (lambda: active_epochs(-1, {"text"}), "`epochs`"),
        (lambda: phase_of_epoch(0, ()), "`schedule`"),
        (lambda: phase_of_epoch(0, "train"), "`schedule`"),
        (lambda: active_epochs(4, {"visual"}, ("train",)), "`phases`"),
    ],
)
def test_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@given(st.integers(0, 40), st.lists(st.sampled_from("abc"), min_size=1, max_size=4))
def test_any_schedule_cycles_and_active_epochs_count_it(epochs, schedule):
    """A method's phases cycle epoch by epoch; active_epochs counts the epochs of a subset."""
    phases = [phase_of_epoch(e, schedule) for e in range(epochs)]
    assert phases == [schedule[e % len(schedule)] for e in range(epochs)]
    for subset in ({schedule[0]}, set(schedule)):
        assert active_epochs(epochs, subset, schedule) == sum(p in subset for p in phases)
    assert phase_of_epoch(0, ("train",)) == phase_of_epoch(epochs, ("train",)) == "train"
