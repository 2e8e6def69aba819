"""A training category with a single normal image (paper App. F.2 and hito2448/Res2CLIP
`data/dataset.py`: each query's reference is another normal image of its category).

:func:`resad_kit.data.sampling.training_reference` is the draw, with the official code's
fallback (the query as its own reference) behind ``self_reference=True``; the example
stops with a one-line usage error before any work instead of a traceback in training.
"""

from __future__ import annotations

import random
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resad_kit.data import synthesize_dataset
from resad_kit.data.sampling import training_reference


@given(
    normals=st.lists(st.integers(0, 60), min_size=1, max_size=12, unique=True),
    query=st.integers(0, 60),
    seed=st.integers(0, 2**32 - 1),
)
def test_draw_equals_a_uniform_choice_without_the_query(normals, query, seed):
    """The reference (a naive choice from the list without the query) and the same random
    stream: the draw is uniform, never the query, and uses one random number."""
    others = [i for i in normals if i != query]
    if not others:
        return
    a, b = random.Random(seed), random.Random(seed)
    assert training_reference(a, normals, query) == b.choice(others)
    assert a.getstate() == b.getstate()


def test_single_normal_image_uses_the_query_only_when_asked():
    rng = random.Random(0)
    state = rng.getstate()
    assert training_reference(rng, [4], 4, self_reference=True) == 4
    assert rng.getstate() == state  # no random number drawn
    assert training_reference(rng, [4], 9) == 4  # an anomalous query: the only normal image
    with pytest.raises(ValueError, match=r"only normal image of its category.*self_reference"):
        training_reference(rng, [4], 4)
    with pytest.raises(ValueError, match="`normals` is empty"):
        training_reference(rng, [], 4, self_reference=True)


def _single_normal_root(tmp_path):
    """MVTec AD (the auxiliary set of MPDD) with a category whose test split holds one
    normal image, and an MPDD category to evaluate."""
    root = tmp_path / "data"
    synthesize_dataset(root / "mvtec", ["brick"], n_train=2, n_test=3, image_size=16)
    shutil.move(root / "mvtec" / "brick", root / "mvtec" / "bottle")
    synthesize_dataset(root / "mpdd", ["coins"], n_train=2, n_test=4, image_size=16)
    shutil.move(root / "mpdd" / "coins", root / "mpdd" / "tubes")
    argv = ["--backbone", "tiny", "--device", "cpu", "--data-root", str(root), "--allow-subset"]
    argv += ["--mode", "fine-tune", "--datasets", "mpdd", "--shots", "1", "--no-progress"]
    return [*argv, "--image-size", "16", "--epochs", "1", "--seeds", "0", "--heatmaps", "0"]


def test_paper_profile_stops_before_training_on_a_single_normal_image(example, tmp_path, capsys):
    """One line, exit 2, before any training (the old example failed inside train() with
    a traceback)."""
    argv = _single_normal_root(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        example.main([*argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == (
        "resad-kit reproduce: error: training on mvtec/bottle needs at least two normal test "
        "images (each query's reference is another normal image); it has 1 (--profile "
        "official uses a single one as its own)\n"
    )
    assert not (tmp_path / "run").exists()


def test_official_profile_trains_with_the_query_as_its_own_reference(
    example, tmp_path, monkeypatch
):
    """The official profile trains (the single normal image is its own reference when it is
    the query, as in the official code), warns in the log, and evaluates."""
    import resad_kit.engine._queries as queries

    draws = []
    real = queries.training_reference

    def spy(rng, normals, query, *, self_reference=False):
        ref = real(rng, normals, query, self_reference=self_reference)
        draws.append((tuple(normals), query, ref, self_reference))
        return ref

    monkeypatch.setattr(queries, "training_reference", spy)
    out = tmp_path / "run"
    assert (
        example.main([*_single_normal_root(tmp_path), "--profile", "official", "--out", str(out)])
        == 0
    )
    assert all(s for *_, s in draws)
    assert [(n, q) for n, q, r, _ in draws if q == r] == [((0,), 0)]  # the normal query
    assert (
        "has a single normal image; as in the official code it is its own"
        in (out / "log.txt").read_text()
    )
    assert (out / "metrics.json").is_file()
