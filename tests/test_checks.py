"""The input-check switch ``resad_kit.checks`` and the checked-façade / unchecked-core split.

What the tests prove:

* ``checks(False)`` works as a statement and as a context manager, restores the previous
  state on exit (also on an exception, also nested), is per thread, rejects non-bools, and
  the environment variable ``RESAD_KIT_CHECKS`` sets the default at import (subprocess);
* every public op of ``resad_kit.ops`` and module of ``resad_kit.nn`` raises on bad input with
  checks on, does not validate with checks off, and returns bit-identical results both ways
  for good input;
* checks that read tensor values (a device-to-host sync) are skipped while ``torch.compile``
  traces: a ``fullgraph`` trace would fail on the ``bool(tensor)`` of such a check;
* with checks off, a Res²CLIP forward and training step on the tiny CLIP run no value check
  at all (counted on CPU by ``VALUE_CHECKS_RUN``);
* with checks off and ``retrieval_k="dense"`` the same hot path reads no tensor value on the
  host at all (counted on CPU by ``_count_host_reads``, which sees the sparse retrieval's
  reads with the default ``"auto"``), and, on a GPU, runs under
  ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import resad_kit
from resad_kit.clip import ClipBackbone
from resad_kit.methods import Res2CLIP, Res2CLIPConfig, TrainingBatch
from resad_kit.nn import (
    AttentionAdapter,
    LocalConvAdapter,
    QueryFormer,
    QueryFormerConfig,
    ResidualAdapter,
    query_cross_attention,
    query_former_loss,
    self_attention_adapter,
)
from resad_kit.ops import (
    cosine_score,
    dpc_knn,
    fuse,
    gaussian_blur,
    gaussian_window,
    global_residual,
    harmonic_aggregate,
    knn_distance,
    magnitude_score,
    match_regions,
    progressive_region_aggregation,
    projection_score,
    prompt_ensemble_mean,
    radial_distance,
    radial_penalty,
    region_weights,
    retrieve,
    sparsemax,
    sparsemax_threshold,
    spatial_aggregate,
    text_residual,
    top_fraction_mean,
    upsample_patches,
    visual_residual,
    window_indices,
)
from resad_kit.ops import losses as L
from resad_kit.ops._validation import VALUE_CHECKS_RUN

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# The switch
# --------------------------------------------------------------------------------------------


def test_context_manager_restores_the_state_also_on_exceptions():
    assert bool(resad_kit.checks())
    with resad_kit.checks(False) as state:
        assert not state
        assert not resad_kit.checks()
        with resad_kit.checks(True):
            assert resad_kit.checks()
        assert not resad_kit.checks()
    assert resad_kit.checks()
    with pytest.raises(RuntimeError, match="boom"), resad_kit.checks(False):
        raise RuntimeError("boom")
    assert resad_kit.checks()


def test_plain_call_switches_until_switched_back():
    try:
        resad_kit.checks(False)
        assert not resad_kit.checks()
        assert repr(resad_kit.checks()) == "resad_kit.checks(False)"
    finally:
        resad_kit.checks(True)
    assert resad_kit.checks()


@pytest.mark.parametrize("bad", [0, 1, "off", 1.0])
def test_non_bool_is_rejected(bad):
    with pytest.raises(TypeError, match="`enabled` must be True, False or None"):
        resad_kit.checks(bad)


def test_the_state_is_per_thread():
    """A thread starts from the process default and its switch does not leak to others."""
    seen = {}

    def worker():
        seen["start"] = bool(resad_kit.checks())
        resad_kit.checks(False)
        seen["after"] = bool(resad_kit.checks())

    with resad_kit.checks(False):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert not resad_kit.checks()
    assert seen == {"start": True, "after": False}
    assert resad_kit.checks()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", False), ("Off", False), ("1", True)],
)
def test_environment_variable_sets_the_default(value, expected):
    code = (
        "import torch, resad_kit\n"
        "from resad_kit.ops import visual_residual\n"
        "print(bool(resad_kit.checks()))\n"
        "try:\n"
        "    visual_residual(torch.tensor([float('nan'), 0.0]), torch.ones(2))\n"
        "    print('unchecked')\n"
        "except ValueError:\n"
        "    print('checked')\n"
    )
    env = {**os.environ, "RESAD_KIT_CHECKS": value}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(expected), "checked" if expected else "unchecked"]


# --------------------------------------------------------------------------------------------
# Every façade: raises when checked, skips validation when not, same bits for good input
# --------------------------------------------------------------------------------------------

_G = torch.Generator().manual_seed(0)
_X = torch.randn(3, 6, generator=_G)
_NAN = torch.tensor([[0.0, float("nan"), 1.0, 2.0], [1.0, 0.0, 0.5, 0.25]])
_MAP = torch.rand(2, 4, 4, generator=_G)
_NAN_MAP = _MAP.clone()
_NAN_MAP[0, 1, 2] = float("nan")
_FEATS = torch.randn(2, 4, 8, generator=_G)
_BANK = torch.randn(10, 8, generator=_G)
_R = radial_distance(2, 2)
_PATCHES = torch.randn(2, 16, 8, generator=_G)
_SCORES, _LABELS = torch.tensor([0.2, -0.3, 0.9]), torch.tensor([0, 1, 1])
_PROBS, _TARGETS = torch.rand(2, 5, generator=_G), (torch.rand(2, 5, generator=_G) > 0.5)
_ADAPTER = ResidualAdapter(8)
_LOCAL = LocalConvAdapter(8)
with torch.no_grad():  # leave the zero initialisation, so the adapters are not the identity
    _ADAPTER.fc2.weight.normal_(generator=_G)
    _LOCAL.up.weight.normal_(generator=_G)
_ATTENTION = AttentionAdapter(8, inner_dim=4, heads=2)
_ATT_WEIGHTS = [p.detach() for p in _ATTENTION.parameters()]
_QF = QueryFormer(4, 8, QueryFormerConfig(num_heads=2))
_QF_PROJ = (_QF.q_normal, _QF.kv_normal, _QF.out_normal)
# background tokens near the last anchor, two components near the first two
_ANCHORS = torch.eye(3)
_TOKENS = torch.cat(
    [a + 0.05 * torch.rand(2, 12, 3, generator=_G) for a in _ANCHORS.flip(0)], dim=1
)
_NAN_TOKENS = _TOKENS.clone()
_NAN_TOKENS[0, 0, 0] = float("nan")


def _seeded():
    return torch.Generator().manual_seed(0)


_NAN_FEATS = _FEATS.clone()
_NAN_FEATS[0, 1, 2] = float("nan")
_REGIONS = torch.randint(0, 3, (2, 16), generator=_G)

# name → (call with good input, call with input the checks reject)
FACADES = {
    "sparsemax": (lambda: sparsemax(_X, k="auto"), lambda: sparsemax(_X.mul(9).int())),
    "sparsemax_threshold": (
        lambda: sparsemax_threshold(_X, dim=0),
        lambda: sparsemax_threshold(_X.mul(9).int()),
    ),
    "radial_distance": (lambda: radial_distance(3, 4), lambda: radial_distance(3, 0)),
    "radial_penalty": (
        lambda: radial_penalty(_R, _R.repeat(2)),
        lambda: radial_penalty(_R, _R, gamma=-1.0),
    ),
    "retrieve": (
        lambda: retrieve(_FEATS, _BANK, query_radius=_R, bank_radius=_BANK[:, 0].abs()),
        lambda: retrieve(_FEATS, _BANK, query_radius=_R, bank_radius=_R.repeat(2)[:10], gamma=-1),
    ),
    "knn_distance": (lambda: knn_distance(_FEATS, _BANK, k=2), lambda: knn_distance(_NAN, _NAN)),
    "prompt_ensemble_mean": (
        lambda: prompt_ensemble_mean(_FEATS, normalize_each=True),
        lambda: prompt_ensemble_mean(_NAN),
    ),
    "text_residual": (
        lambda: text_residual(_X[0], _X[1], unit=True),
        lambda: text_residual(_NAN[0], _NAN[1]),
    ),
    "visual_residual": (
        lambda: visual_residual(_FEATS, _FEATS[0]),
        lambda: visual_residual(_NAN, _NAN),
    ),
    "global_residual": (
        lambda: global_residual(_FEATS[:, 0], _FEATS),
        lambda: global_residual(_NAN[0], _NAN[None]),
    ),
    "projection_score": (
        lambda: projection_score(_FEATS, _BANK[0]),
        lambda: projection_score(_NAN, _NAN[1]),
    ),
    "cosine_score": (lambda: cosine_score(_FEATS, _BANK[0]), lambda: cosine_score(_NAN, _NAN[1])),
    "magnitude_score": (lambda: magnitude_score(_FEATS), lambda: magnitude_score(_NAN)),
    "top_fraction_mean": (
        lambda: top_fraction_mean(_MAP, 0.2),
        lambda: top_fraction_mean(_NAN_MAP),
    ),
    "fuse": (
        lambda: fuse({"a": _MAP, "b": _MAP * 2}, {"a": 0.5, "b": 2.0}),
        lambda: fuse([_MAP, _NAN_MAP], [1.0, 1.0]),
    ),
    "gaussian_blur": (lambda: gaussian_blur(_MAP, sigma=1.5), lambda: gaussian_blur(_NAN_MAP)),
    "upsample_patches": (
        lambda: upsample_patches(_PATCHES[..., 0], 7),
        lambda: upsample_patches(_NAN, (3, 3), grid=(2, 2)),
    ),
    "global_hinge_loss": (
        lambda: L.global_hinge_loss(_SCORES, _LABELS, target=0.7),
        lambda: L.global_hinge_loss(_SCORES, _LABELS * 2),
    ),
    "local_hinge_loss": (
        lambda: L.local_hinge_loss(_MAP, _MAP > 0.5, reduction="per_sample"),
        lambda: L.local_hinge_loss(_MAP, (_MAP > 0.5).int() * 2),
    ),
    "magnitude_loss": (
        lambda: L.magnitude_loss(_MAP, _MAP.flip(0), _MAP > 0.5),
        lambda: L.magnitude_loss(-_MAP, _MAP, _MAP > 0.5),
    ),
    "direction_regularizer": (
        lambda: L.direction_regularizer(_FEATS, _BANK[0]),
        lambda: L.direction_regularizer(_NAN, _NAN[0]),
    ),
    "magnitude_regularizer": (
        lambda: L.magnitude_regularizer(_MAP, _MAP.flip(0)),
        lambda: L.magnitude_regularizer(-_MAP, _MAP),
    ),
    "stop_gradient_projection": (
        lambda: L.stop_gradient_projection(_FEATS, _BANK[0], update="visual"),
        lambda: L.stop_gradient_projection(_NAN, _NAN[0], update="text"),
    ),
    "binary_focal_loss": (
        lambda: L.binary_focal_loss(_PROBS, _TARGETS, alpha=0.25),
        lambda: L.binary_focal_loss(_PROBS, _TARGETS, alpha=2.0),
    ),
    "l1_loss": (lambda: L.l1_loss(_PROBS, _TARGETS), lambda: L.l1_loss(_PROBS + 1, _TARGETS)),
    "dice_loss": (lambda: L.dice_loss(_PROBS, _TARGETS), lambda: L.dice_loss(_PROBS + 1, _TARGETS)),
    "spatial_aggregate": (
        lambda: spatial_aggregate(_PATCHES, (4, 4), 3, border="renormalize"),
        lambda: spatial_aggregate(_PATCHES, (4, 4), 2),
    ),
    "gaussian_window": (lambda: gaussian_window(5, 4.0), lambda: gaussian_window(4)),
    "patch_alignment_loss": (
        lambda: L.patch_alignment_loss(_PATCHES, _PATCHES[..., 0] > 0),
        lambda: L.patch_alignment_loss(_PATCHES, (_PATCHES[..., 0] > 0).int() * 2),
    ),
    "self_attention_adapter": (
        lambda: self_attention_adapter(_FEATS, *_ATT_WEIGHTS, heads=2),
        lambda: self_attention_adapter(_NAN.repeat(1, 2), *_ATT_WEIGHTS, heads=2),
    ),
    "AttentionAdapter": (lambda: _ATTENTION(_FEATS), lambda: _ATTENTION(_NAN.repeat(1, 2))),
    "dpc_knn": (
        lambda: dpc_knn(_PATCHES, 3, k=2, generator=_seeded()),
        lambda: dpc_knn(_PATCHES * float("nan"), 3, generator=_seeded()),
    ),
    "progressive_region_aggregation": (
        lambda: progressive_region_aggregation(_TOKENS, _ANCHORS, generator=_seeded()),
        lambda: progressive_region_aggregation(_NAN_TOKENS, _ANCHORS, generator=_seeded()),
    ),
    "match_regions": (
        lambda: match_regions(_PATCHES, _REGIONS, _BANK[:3], 3),
        lambda: match_regions(_PATCHES * float("nan"), _REGIONS, _BANK[:3], 3),
    ),
    "region_weights": (
        lambda: region_weights(_REGIONS, torch.tensor([[0, 1], [1, 2]]), grid=(4, 4), pool=2),
        lambda: region_weights(_REGIONS, torch.tensor([[0, 1], [1, 2]]), grid=(4, 4), pool=3),
    ),
    "query_cross_attention": (
        lambda: query_cross_attention(_QF.queries, _BANK[:4], *_QF_PROJ, num_heads=2, scope="all"),
        lambda: query_cross_attention(_QF.queries, _BANK[:3], *_QF_PROJ, num_heads=2, scope="all"),
    ),
    "query_former_loss": (
        lambda: query_former_loss(_BANK[:4], _BANK[4:8], _BANK[:4].flip(0)),
        lambda: query_former_loss(_BANK[:4], _BANK[4:8], _BANK[:4, None]),
    ),
    "window_indices": (lambda: window_indices((4, 4), 2), lambda: window_indices((4, 4), 5)),
    "harmonic_aggregate": (
        lambda: harmonic_aggregate(_MAP[:, :3, 3], window_indices((2, 2), 1)[:3], (2, 2)),
        lambda: harmonic_aggregate(-_MAP[:, :3, 3], window_indices((2, 2), 1)[:3], (2, 2)),
    ),
    "ResidualAdapter": (lambda: _ADAPTER(_FEATS), lambda: _ADAPTER(_NAN.repeat(1, 2))),
    "LocalConvAdapter": (lambda: _LOCAL(_PATCHES), lambda: _LOCAL(_PATCHES * float("nan"))),
}


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for part in out for t in _tensors(part)] if isinstance(out, tuple) else []


@pytest.mark.parametrize("name", list(FACADES))
def test_facade_checks_only_when_switched_on(name):
    good, bad = FACADES[name]
    with pytest.raises((ValueError, TypeError)):
        bad()
    with torch.no_grad():
        checked = _tensors(good())
        with resad_kit.checks(False):
            unchecked = _tensors(good())
            bad()  # not validated: garbage in, garbage out, but no error
    assert checked
    assert len(checked) == len(unchecked)
    for a, b in zip(checked, unchecked, strict=True):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)


def test_every_public_op_is_in_the_table():
    """A new public op must be added to FACADES (and so get a checked façade)."""
    from resad_kit import nn, ops

    ops_names = {n for n in ops.__all__ if callable(getattr(ops, n)) and n[0].islower()}
    loss_names = {n for n in L.__all__ if n[0].islower()}
    # a container, a preset, a module over query_cross_attention (checked there), a config
    skipped = {"Res2CLIPAdapters", "GlobalAdapter", "QueryFormer", "QueryFormerConfig"}
    nn_names = set(nn.__all__) - skipped
    assert ops_names | loss_names | nn_names <= set(FACADES)


# --------------------------------------------------------------------------------------------
# torch.compile and the Res²CLIP hot path
# --------------------------------------------------------------------------------------------


def test_value_checks_are_skipped_while_compiling():
    """A ``bool(tensor)`` in a traced function breaks a fullgraph trace: none may run (here the
    finite checks of ``magnitude_score`` and the binary-label check of the hinge)."""
    torch._dynamo.reset()

    def step(x, labels):
        return L.global_hinge_loss(magnitude_score(x).mean(-1), labels, target=2.0)

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(compiled(_FEATS, labels), step(_FEATS, labels))
    VALUE_CHECKS_RUN.clear()
    compiled(_FEATS, labels)
    assert dict(VALUE_CHECKS_RUN) == {}


SIZE = 32


@pytest.fixture(scope="module")
def tiny():
    backbone = ClipBackbone.tiny(seed=0, image_size=SIZE)
    g = torch.Generator().manual_seed(0)
    refs, queries = torch.randn(2, 3, SIZE, SIZE, generator=g), torch.randn(2, 3, SIZE, SIZE)
    masks = torch.zeros(2, SIZE, SIZE)
    masks[1, 4:12, 8:20] = 1
    batch = TrainingBatch(backbone(queries), backbone(refs[:2]), masks)
    return backbone, refs, queries, batch


def _models(backbone, refs, device="cpu", retrieval_k="auto"):
    """A training-free and a fine-tuned Res²CLIP with fitted references."""
    free = Res2CLIP(backbone, Res2CLIPConfig(retrieval_k=retrieval_k))
    free.fit_references(refs.to(device))
    tuned_config = Res2CLIPConfig.official_code("fine_tuned", retrieval_k=retrieval_k)
    tuned = Res2CLIP(backbone, tuned_config).to(device)
    tuned.fit_references(refs.to(device))
    return free, tuned


def _run(free, tuned, queries, batch):
    """Both forwards, both phases' losses and their backward."""
    with torch.no_grad():
        free(queries)
        tuned(queries)
    tuned.losses(batch, "visual")["total"].backward()
    tuned.losses(batch, "text")["total"].backward()


def _hot_path(tiny, retrieval_k="auto"):
    backbone, refs, queries, batch = tiny
    _run(*_models(backbone, refs, retrieval_k=retrieval_k), queries, batch)


def test_res2clip_hot_path_runs_no_value_check_with_checks_off(tiny):
    """Counts the checks that read tensor values (device syncs) by calling function."""
    VALUE_CHECKS_RUN.clear()
    _hot_path(tiny)
    assert VALUE_CHECKS_RUN, "with checks on the counter sees value checks (it can fail)"
    VALUE_CHECKS_RUN.clear()
    with resad_kit.checks(False):
        _hot_path(tiny)
    assert dict(VALUE_CHECKS_RUN) == {}


def test_res2clip_hot_path_reads_nothing_on_the_host_with_dense_retrieval(tiny, monkeypatch):
    """With checks off and ``retrieval_k="dense"``, the Res²CLIP hot path (training-free and
    fine-tuned forward, both phases' losses and backward) makes no host read at all (see
    ``_count_host_reads``); with the default ``"auto"`` the counter sees the support search."""
    with resad_kit.checks(False):
        with _count_host_reads(monkeypatch) as calls:
            _hot_path(tiny)
        assert calls, "the default sparse retrieval reads support sizes (the counter can fail)"
        with _count_host_reads(monkeypatch) as calls:
            _hot_path(tiny, retrieval_k="dense")
    assert calls == []


def test_config_accepts_dense_retrieval_and_names_a_bad_value():
    import numpy as np

    assert Res2CLIPConfig(retrieval_k="dense").retrieval_k == "dense"
    assert Res2CLIPConfig(retrieval_k=np.int64(16)).retrieval_k == 16
    stored = Res2CLIPConfig.from_dict(Res2CLIPConfig(retrieval_k="dense").to_dict())
    assert stored.retrieval_k == "dense"
    for bad in ("sparse", 0, True, 2.0):
        with pytest.raises(ValueError, match="`retrieval_k` must be None, 'auto', 'dense'"):
            Res2CLIPConfig(retrieval_k=bad)


# Host reads: what would be a device-to-host sync on a GPU, counted on CPU. Python level: the
# Tensor methods that turn a value into a Python object (``bool``/``int``/``float``/``index``,
# ``item``, ``tolist``, ``cpu``, ``numpy``) or size a result by the data (``nonzero``,
# ``torch.equal``); ``is None`` tests and shape arithmetic call none of them. ATen level (a
# dispatch mode, so C++ callers are seen too: ``x[bool_mask]`` runs ``nonzero`` inside):
# ``_local_scalar_dense`` (behind every scalar conversion), ``nonzero``, ``equal``,
# ``masked_select`` and indexing by a boolean mask. Meta tensors (no data) are not counted.
_HOST_READ_METHODS = (
    "__bool__",
    "item",
    "__int__",
    "__float__",
    "__index__",
    "tolist",
    "nonzero",
    "cpu",
    "numpy",
)
_HOST_READ_OPS = ("_local_scalar_dense", "nonzero", "aten.equal", "masked_select")


class _AtenHostReads(TorchDispatchMode):
    def __init__(self, calls: list[str]):
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        indices = args[1] if name.startswith("aten.index.Tensor") else ()
        bool_index = any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()
        )
        if bool_index or any(op in name for op in _HOST_READ_OPS):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _count_host_reads(monkeypatch):
    """Yields the list of host reads made inside the block (method or op names)."""
    calls: list[str] = []

    def spy(name, original):
        def wrapper(*args, **kwargs):
            if not any(isinstance(a, torch.Tensor) and a.is_meta for a in args):
                calls.append(name)
            return original(*args, **kwargs)

        return wrapper

    with monkeypatch.context() as patch:
        for name in _HOST_READ_METHODS:
            patch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
        patch.setattr(torch, "nonzero", spy("torch.nonzero", torch.nonzero))
        patch.setattr(torch, "equal", spy("torch.equal", torch.equal))
        with _AtenHostReads(calls):
            yield calls


def test_host_read_counter_sees_every_kind_of_read(monkeypatch):
    """The counter can fail: each kind of read is seen (and shape arithmetic is not)."""
    x = torch.tensor([0.5, -1.0, 2.0])
    reads = [
        lambda: bool(x.sum() > 0),
        lambda: x.max().item(),
        lambda: int(x[0]),
        lambda: float(x[0]),
        lambda: [0, 1, 2][torch.tensor(1)],
        lambda: x.tolist(),
        lambda: x.nonzero(),
        lambda: torch.nonzero(x),
        lambda: torch.equal(x, x),
        lambda: x[x > 0],
        lambda: x.numpy(),
    ]
    for read in reads:
        with _count_host_reads(monkeypatch) as calls:
            read()
        assert calls, read
    with _count_host_reads(monkeypatch) as calls:
        y = (x * 2).sort(stable=True).values.cumsum(0)
        assert y is not None  # an `is None` test reads nothing
        assert x.shape[0] == 3  # nor does shape arithmetic
    assert calls == []


def test_retrieval_dense_reads_nothing_on_the_host_auto_does(monkeypatch):
    """``k="dense"`` (retrieve, sparsemax, sparsemax_threshold) sizes everything by shapes;
    ``k="auto"`` reads the support sizes (and tests the radii's period) on the host."""
    g = torch.Generator().manual_seed(1)
    q, bank = torch.randn(2, 3, 16, 8, generator=g), torch.randn(2, 1, 48, 8, generator=g)
    r = radial_distance(4, 4)
    with resad_kit.checks(False):
        for k, expect_reads in (("auto", True), ("dense", False)):
            with _count_host_reads(monkeypatch) as calls:
                retrieve(q, bank, query_radius=r, bank_radius=r.repeat(3), k=k, chunk_size=40)
                sparsemax(q, k=k)
                sparsemax_threshold(q, dim=-2, k=k)
            assert bool(calls) == expect_reads, (k, calls)


@pytest.mark.gpu
def test_no_synchronising_check_on_cuda_with_checks_off(tiny):
    """With checks off and ``retrieval_k="dense"`` the Res²CLIP hot path (both modes' forward,
    both phases' losses and backward) runs under ``set_sync_debug_mode("error")``: no check
    and no op synchronises. Set up outside: the models, and the text residual ``R_t``
    (``encode_text`` copies the tokenised prompts host→device, which the debug mode flags too;
    the forward recomputes it every call)."""
    backbone, refs, queries, batch = tiny
    backbone.to("cuda")
    try:
        queries, refs = queries.cuda(), refs.cuda()
        batch = TrainingBatch(backbone(queries), backbone(refs), batch.masks.cuda())
        free, tuned = _models(backbone, refs, "cuda", retrieval_k="dense")
        for model in (free, tuned):
            r_t = model._text_residual()
            model._text_residual = lambda r_t=r_t: r_t
        with resad_kit.checks(False):
            torch.cuda.set_sync_debug_mode("error")
            try:
                _run(free, tuned, queries, batch)
            finally:
                torch.cuda.set_sync_debug_mode(0)
    finally:
        backbone.to("cpu")
    q, r = _FEATS.cuda(), _FEATS.flip(0).cuda()
    m, mask = _MAP.cuda(), (_MAP > 0.5).cuda()
    with resad_kit.checks(False):
        torch.cuda.set_sync_debug_mode("error")
        try:
            res = visual_residual(q, r)
            maps = upsample_patches(magnitude_score(res), 6, grid=(2, 2))
            fuse([gaussian_blur(maps), top_fraction_mean(maps)[..., None, None] + maps], [1, 1])
            cosine_score(q, r[0]), projection_score(res, r[0, 0])
            L.local_hinge_loss(m, mask) + L.magnitude_loss(m, m.flip(0), mask)
            _ADAPTER.cuda()(q)
        finally:
            torch.cuda.set_sync_debug_mode(0)


# --------------------------------------------------------------------------------------------
# One number check, one sparsemax threshold
# --------------------------------------------------------------------------------------------


def test_check_number_is_the_one_finite_number_check():
    """Real (numpy scalars too, not bool), finite, optionally ≥ a minimum; float out."""
    import numpy as np

    from resad_kit.ops._validation import check_number

    assert check_number("f", "x", np.float32(0.5), minimum=0.0) == 0.5
    assert type(check_number("f", "x", 3)) is float
    with pytest.raises(TypeError, match="f: `x` must be a real number"):
        check_number("f", "x", True)
    with pytest.raises(ValueError, match="`x` must be a number"):
        check_number("f", "x", "1", what="a number", non_number=ValueError)
    with pytest.raises(ValueError, match="`x` must be finite"):
        check_number("f", "x", float("nan"))
    with pytest.raises(ValueError, match="`x` must be finite and ≥ 0"):
        check_number("f", "x", -1e-9, minimum=0.0)
    with pytest.raises(ValueError, match="`x` must be positive and finite"):
        check_number("f", "x", 0.0, minimum=0.0, strict=True)
    with pytest.raises(ValueError, match="`lr` must be a finite number >= 0"):
        check_number("f", "lr", float("inf"), minimum=0.0, requirement="a finite number >= 0")


def test_retrieve_forms_the_threshold_with_the_simplex_function(monkeypatch):
    """retrieve's differentiable weights use simplex's ``support_threshold`` (no copy of the
    formula), and the weights equal dense sparsemax of the similarities."""
    import resad_kit.ops._retrieval_core as core
    from resad_kit.ops._sorted_support import support_threshold

    calls = []

    def spy(cumsum, support):
        calls.append(cumsum.shape)
        return support_threshold(cumsum, support)

    monkeypatch.setattr(core, "support_threshold", spy)
    q, bank = _FEATS[0], _BANK
    out = retrieve(q, bank, normalize=False)
    assert calls
    assert torch.equal(out.weights.to_dense(), sparsemax(q @ bank.T))
