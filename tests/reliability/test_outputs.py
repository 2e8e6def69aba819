"""The outputs of examples/res2clip_full.py are never lost: a rerun without `--resume`
refuses to touch an earlier run, `--overwrite` replaces it (and says so in the log), and
temporary files of killed writers are removed at the start of the next run.

The old example overwrote a finished run's checkpoint after one epoch of a rerun.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = ["--backbone", "tiny", "--device", "cpu", "--no-progress", "--image-size", "32"]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _earlier_run(out: Path, which: str) -> None:
    """What a finished run leaves, or a run killed during its first training."""
    (out / "checkpoints" / "synthetic").mkdir(parents=True)
    (out / "checkpoints" / "synthetic" / "checkpoint.safetensors").write_bytes(b"weights")
    (out / "config.json").write_text('{"args": {}}\n')
    (out / "log.txt").write_text("earlier log\n")
    if which == "finished":
        (out / "metrics.json").write_text("{}\n")
        (out / "heatmaps").mkdir()


@pytest.mark.parametrize("which", ["finished", "started"])
def test_rerun_without_resume_refuses_and_changes_nothing(
    example, tmp_path, capsys, monkeypatch, which
):
    out = tmp_path / "run"
    _earlier_run(out, which)
    before = _snapshot(out)
    monkeypatch.setattr(example, "train", None)  # never reached
    with pytest.raises(SystemExit) as exit_info:
        example.main([*TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1
    assert f"--out {out} holds a previous run (config.json" in err
    assert "pass --resume to continue it or --overwrite to replace it" in err
    assert _snapshot(out) == before


def test_overwrite_removes_the_earlier_run_and_logs_it(example, tmp_path, killed, monkeypatch):
    out = tmp_path / "run"
    _earlier_run(out, "finished")

    def stop(*args, **kwargs):
        raise killed

    monkeypatch.setattr(example, "build_backbone", stop)  # stop right after the preparation
    with pytest.raises(killed):
        example.main([*TINY, "--out", str(out), "--overwrite"])
    left = sorted(p.name for p in out.iterdir())
    assert left == ["data", "log.txt"]  # the generated data set is kept and reused
    log = (out / "log.txt").read_text()
    assert log.startswith("earlier log\n")  # the log is appended to
    assert (
        "--overwrite: removed the previous run's config.json, metrics.json, checkpoints, "
        f"heatmaps from {out}"
    ) in log


def test_new_run_and_empty_resume_are_logged(example, tmp_path, killed, monkeypatch):
    def stop(*args, **kwargs):
        raise killed

    monkeypatch.setattr(example, "build_backbone", stop)
    for flags, words in (([], "new run in"), (["--resume"], "(nothing to resume there)")):
        out = tmp_path / f"run{len(flags)}"
        with pytest.raises(killed):
            example.main([*TINY, "--out", str(out), *flags])
        assert words in (out / "log.txt").read_text()


def test_stale_temporary_files_are_removed_at_start(example, tmp_path, killed, monkeypatch):
    """Leftovers of writers killed between creating and renaming their temporary files
    (a result file, a checkpoint, a synthetic category) are deleted; real files stay."""
    out = tmp_path / "run"
    _earlier_run(out, "started")
    stale = [
        out / ".metrics.json.tmp123-9f3a",
        out / "checkpoints" / "synthetic" / ".checkpoint.safetensors.tmp4567",
    ]
    for path in stale:
        path.write_bytes(b"partial")
    (out / "data" / "synthetic" / ".brick.tmpk2x9" / "train").mkdir(parents=True)

    def stop(*args, **kwargs):
        raise killed

    monkeypatch.setattr(example, "build_backbone", stop)
    with pytest.raises(killed):
        example.main([*TINY, "--out", str(out), "--resume"])
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in (out / "data" / "synthetic").iterdir()) == ["brick", "coins"]
    assert (out / "checkpoints" / "synthetic" / "checkpoint.safetensors").read_bytes() == b"weights"
    log = (out / "log.txt").read_text()
    assert f"removed {stale[0]}, left by an interrupted writer" in log


def test_a_partial_synthetic_data_set_is_regenerated(example, tmp_path, killed, monkeypatch):
    """A synthetic category left incomplete (6 of 8 test images) by an older, killed run
    is regenerated before use; the old example used it as it was."""
    import resad_kit.data.synthetic as synthetic

    out = tmp_path / "run"
    kwargs = {k: v for k, v in example.SYNTHETIC.items() if k != "categories"}
    reference = synthetic.synthesize_dataset(tmp_path / "ref", ["brick"], seed=0, **kwargs)
    partial = synthetic.synthesize_dataset(out / "data" / "synthetic", ["brick"], seed=0, **kwargs)
    for path in sorted((partial / "brick" / "test").rglob("*.png"))[-2:]:
        path.unlink()

    def stop(*args, **kwargs):
        raise killed

    monkeypatch.setattr(example, "build_backbone", stop)
    with pytest.raises(killed):
        example.main([*TINY, "--out", str(out)])
    files = sorted(p.relative_to(partial).as_posix() for p in partial.rglob("brick/**/*.png"))
    expected = sorted(p.relative_to(reference).as_posix() for p in reference.rglob("*.png"))
    assert files == expected
