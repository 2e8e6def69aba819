"""`--resume` continues a run of examples/res2clip_full.py killed at any point and gives
exactly the metrics of an uninterrupted run.

The default run trains twice (here: on the synthetic set for the sample, then on the
sample for the synthetic set), then evaluates and writes the result files. Each test kills
one run at one point (an exception that nothing catches, raised from inside the library as
a kill would stop it), resumes it with the same flags plus `--resume`, and compares every
record of metrics.json with the uninterrupted run's, exactly. The old example called every
training with `resume=True`, so a run killed before the second training had saved an
epoch could not be resumed ("no checkpoint").
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import pytest

import resad_kit.engine.protocol as protocol
import resad_kit.engine.results as results
import resad_kit.engine.training as training
from resad_kit.engine.results import load_results

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(example: ModuleType, one_thread: None, fast: list[str], tmp_path_factory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert example.main([*fast, "--out", str(out)]) == 0
    return out


def _checkpoints(out: Path) -> dict[str, bool]:
    return {
        aux: (out / "checkpoints" / aux / training.CHECKPOINT_NAME).is_file()
        for aux in ("synthetic", "sample")
    }


# (where, module, function, call, after, checkpoints present after the kill)
KILLS = [
    ("training 1 before its first checkpoint", training, "save_checkpoint", 1, False,
     {"synthetic": False, "sample": False}),
    ("training 1 after epoch 1", training, "save_checkpoint", 1, True,
     {"synthetic": True, "sample": False}),
    ("training 2 before its first checkpoint", training, "save_checkpoint", 3, False,
     {"synthetic": True, "sample": False}),
    ("training 2 after epoch 1", training, "save_checkpoint", 3, True,
     {"synthetic": True, "sample": True}),
    ("evaluation after the first category", protocol, "evaluate_category", 2, False,
     {"synthetic": True, "sample": True}),
    ("writing the results after metrics.csv", results, "atomic_write", 2, False,
     {"synthetic": True, "sample": True}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("where", "module", "name", "call", "after", "present"), KILLS, ids=[k[0] for k in KILLS]
)
def test_resume_after_a_kill_gives_the_uninterrupted_metrics(
    example,
    reference,
    fast,
    killed,
    kill_on_call,
    tmp_path,
    monkeypatch,
    where,
    module,
    name,
    call,
    after,
    present,
):
    out = tmp_path / "run"
    kill_on_call(module, name, call, after=after)
    with pytest.raises(killed):
        example.main([*fast, "--out", str(out)])
    monkeypatch.undo()
    assert _checkpoints(out) == present, where
    assert not (out / "metrics.json").exists()

    assert example.main([*fast, "--out", str(out), "--resume"]) == 0
    assert load_results(out) == load_results(reference)
    assert _checkpoints(out) == {"synthetic": True, "sample": True}
    log = (out / "log.txt").read_text()
    assert f"resuming the run in {out}" in log


def test_resume_of_a_finished_run_loads_both_trainings(
    example, reference, fast, kill_on_call, tmp_path
):
    """A finished run resumed: no training step runs again, the checkpoints are unchanged
    and the metrics are the same."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = {p: p.read_bytes() for p in (out / "checkpoints").rglob("*.safetensors")}
    saves = kill_on_call(training, "save_checkpoint", 1, after=False)
    assert example.main([*fast, "--out", str(out), "--resume"]) == 0
    assert saves == []
    assert {p: p.read_bytes() for p in before} == before
    assert load_results(out) == load_results(reference)
