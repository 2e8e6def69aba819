"""resad_kit.engine.atomic: a write is all or nothing, and killed writers' leftovers go."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

import resad_kit.engine.atomic as atomic
from resad_kit.engine.atomic import atomic_write, is_temp_name, remove_stale_temp_files


def test_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "metrics.json"
    atomic_write(path, "first\n")
    atomic_write(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    atomic_write(path, "é\r\n")  # text is encoded as given, newlines untranslated
    assert path.read_bytes() == "é\r\n".encode()


def test_new_file_gets_the_usual_permissions(tmp_path: Path):
    """Like any new file (0o666 less the umask), not mkstemp's owner-only 0o600."""
    umask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "table.md", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch, step: str):
    """A full disk at the sync or the rename: the old content stays, the temporary goes."""
    path = atomic_write(tmp_path / "config.json", '{"valid": true}\n')

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, step, full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, '{"valid": fal')
    monkeypatch.undo()
    assert path.read_text() == '{"valid": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_bad_data_type(tmp_path: Path):
    with pytest.raises(TypeError, match="`data` must be str or bytes"):
        atomic_write(tmp_path / "x", 3)  # type: ignore[arg-type]


def test_stale_temporary_files_and_folders_are_removed(tmp_path: Path):
    keep = [tmp_path / "metrics.json", tmp_path / ".hidden", tmp_path / "notes.tmp"]
    for path in keep:
        path.write_text("keep")
    stale = [
        tmp_path / ".metrics.json.tmp42-ab12",
        tmp_path / "checkpoints" / "mvtec" / ".checkpoint.safetensors.tmp7",
    ]
    stale[1].parent.mkdir(parents=True)
    for path in stale:
        path.write_text("partial")
    folder = tmp_path / "data" / ".brick.tmpx1"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / ".000.png.tmp1").write_text("partial")
    removed = remove_stale_temp_files(tmp_path)
    assert removed == sorted([*stale, folder])
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in [*stale, folder])
    assert remove_stale_temp_files(tmp_path / "missing") == []
    assert is_temp_name(".checkpoint.safetensors.tmp7")
    assert not is_temp_name(".tmp")
