"""Content fingerprints (resad_kit.engine.fingerprint): file digests and training-data records."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import pytest

from resad_kit.data import AnomalyDataset, synthesize_dataset
from resad_kit.engine import fingerprint as fingerprint_module
from resad_kit.engine.fingerprint import data_differences, data_fingerprint, file_digest

SIZE = 16


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_dataset(
        tmp_path_factory.mktemp("data"), ["grass", "brick"], 1, 4, image_size=SIZE
    )


def _count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every file that file_digest reads and hashes."""
    calls: list[str] = []
    real = fingerprint_module._hash_file

    def counting(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(fingerprint_module, "_hash_file", counting)
    return calls


# ---------------------------------------------------------------------------- file_digest


def test_digest_is_blake2b_of_the_bytes(tmp_path):
    """The digest depends on the bytes only: equal for copies, other for one changed byte."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"x" * 1000)
    b.write_bytes(b"x" * 1000)
    c.write_bytes(b"x" * 999 + b"y")
    assert file_digest(a) == hashlib.blake2b(b"x" * 1000, digest_size=32).hexdigest()
    assert file_digest(a) == file_digest(b) != file_digest(c)


def test_rewritten_file_with_restored_mtime_gets_a_new_digest(tmp_path):
    """In place, same size, modification time set back: still a new digest (a file changed
    within RACY_NS of its hashing is never served from the memo)."""
    path = tmp_path / "img.png"
    path.write_bytes(b"a" * 64)
    old = os.stat(path)
    first = file_digest(path)
    path.write_bytes(b"b" * 64)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert file_digest(path) != first


def test_settled_files_are_hashed_once_and_replacements_seen(tmp_path, monkeypatch):
    """A file older than RACY_NS is hashed once per process; a replacement (new inode) with
    the same size and modification time is hashed again."""
    monkeypatch.setattr(fingerprint_module, "RACY_NS", -(10**18))  # treat every file as old
    calls = _count_hashing(monkeypatch)
    path = tmp_path / "img.png"
    path.write_bytes(b"a" * 64)
    old = os.stat(path)
    first = file_digest(path)
    assert file_digest(path) == first
    assert len(calls) == 1  # remembered
    new = tmp_path / "new.png"
    new.write_bytes(b"b" * 64)
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(new, path)
    assert file_digest(path) != first
    assert len(calls) == 2


def test_recent_files_are_hashed_on_every_request(tmp_path, monkeypatch):
    """Within RACY_NS of a change, time stamps cannot prove a file unchanged: no memo."""
    calls = _count_hashing(monkeypatch)
    path = tmp_path / "img.png"
    path.write_bytes(b"a" * 64)
    file_digest(path)
    file_digest(path)
    assert len(calls) == 2


def test_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"file_digest: '.*missing.png' cannot be read"):
        file_digest(tmp_path / "missing.png")


# ---------------------------------------------------------------------------- data records


def test_record_holds_every_sample_with_its_digests(root):
    data = [AnomalyDataset(root, c, "test", image_size=SIZE) for c in ("grass", "brick")]
    record = data_fingerprint(data)
    assert [d["category"] for d in record["datasets"]] == ["grass", "brick"]
    first = record["datasets"][0]
    assert first["root"] == str(root.absolute())
    assert (first["image_size"], first["mask_size"], first["split"]) == (SIZE, SIZE, "test")
    assert len(first["samples"]) == len(data[0])
    for sample, (path, label, image, mask) in zip(data[0].samples, first["samples"], strict=True):
        assert (path, label, image) == (
            sample.relative_path,
            sample.label,
            file_digest(sample.path),
        )
        assert mask == (None if sample.mask_path is None else file_digest(sample.mask_path))
    assert data_differences(record, data_fingerprint(data)) == []
    with pytest.raises(TypeError, match=r"`datasets\[0\]` must be an AnomalyDataset"):
        data_fingerprint(["grass"])


def _record(root: Path, **kwargs) -> dict:
    return data_fingerprint([AnomalyDataset(root, "grass", "test", image_size=SIZE, **kwargs)])


def test_differences_name_what_changed(root):
    """Each kind of change is reported with the sample's relative path or the setting."""
    saved = _record(root)
    samples = saved["datasets"][0]["samples"]
    anomalous = next(s for s in samples if s[3] is not None)[0]

    def changed(edit) -> list[str]:
        now = copy.deepcopy(saved)
        edit(now["datasets"][0])
        return data_differences(saved, now)

    def image_bytes(d):
        d["samples"][0][2] = "0" * 64

    def mask_bytes(d):
        next(s for s in d["samples"] if s[0] == anomalous)[3] = "0" * 64

    def removed(d):
        d["samples"].pop()

    def relabelled(d):
        d["samples"][0][1] = 1

    def reordered(d):
        d["samples"].reverse()

    def moved(d):
        d["root"] = "/elsewhere"

    first = samples[0][0]
    assert changed(image_bytes) == [
        f"data set 0 (grass/test): 1 image(s) with other image bytes: {first!r}"
    ]
    assert changed(mask_bytes) == [
        f"data set 0 (grass/test): 1 image(s) with other mask bytes: {anomalous!r}"
    ]
    assert changed(removed) == [f"data set 0 (grass/test): 1 image(s) removed: {samples[-1][0]!r}"]
    assert changed(relabelled) == [
        f"data set 0 (grass/test): 1 image(s) with another label: {first!r}"
    ]
    assert changed(reordered) == ["data set 0 (grass/test): the same images in another order"]
    assert changed(moved) == []  # the same content elsewhere is the same data
    bilinear = _record(root, mask_interpolation="bilinear")
    assert data_differences(saved, bilinear) == [
        "data set 0 (grass/test): mask_interpolation: checkpoint 'nearest', now 'bilinear'"
    ]
    raw = _record(root, mean=None, std=None)
    assert [line.split(":")[1].strip() for line in data_differences(saved, raw)] == ["mean", "std"]


def test_differences_in_the_data_set_list(root):
    grass, brick = (AnomalyDataset(root, c, "test", image_size=SIZE) for c in ("grass", "brick"))
    saved = data_fingerprint([grass, brick])
    assert data_differences(saved, data_fingerprint([brick, grass])) == [
        "data sets (in order): checkpoint ['grass/test', 'brick/test'], "
        "now ['brick/test', 'grass/test']"
    ]
    assert (
        "checkpoint ['grass/test', 'brick/test'], now ['grass/test']"
        in (data_differences(saved, data_fingerprint([grass]))[0])
    )
