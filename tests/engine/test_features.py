"""FeatureCache: values, keys, stats, disk store (float16 round trip, corruption), errors."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from resad_kit.clip import ClipBackbone, Features
from resad_kit.data import AnomalyDataset, synthesize_dataset
from resad_kit.engine.features import FeatureCache, backbone_fingerprint
from resad_kit.methods import Res2CLIP

SIZE = 32  # tiny backbone input: 8 px patches, 4×4 grid, D = 32, 4 taps
N_TEST = 6


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_dataset(
        tmp_path_factory.mktemp("data"), ["grass"], n_train=2, n_test=N_TEST, image_size=SIZE
    )


@pytest.fixture(scope="module")
def dataset(root: Path) -> AnomalyDataset:
    return AnomalyDataset(root, "grass", "test", image_size=SIZE)


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def reference(backbone: ClipBackbone, dataset: AnomalyDataset) -> Features:
    """The backbone's output on all test images, one batch."""
    return _direct(backbone, dataset, list(range(N_TEST)))


def _direct(backbone: ClipBackbone, dataset: AnomalyDataset, indices: list[int]) -> Features:
    """The backbone's own output on the same images (one batch)."""
    return backbone(dataset.images(indices))


def _assert_features_equal(a: Features, b: Features) -> None:
    assert a.grid == b.grid
    assert len(a.patches) == len(b.patches)
    for x, y in zip([*a.patches, a.cls], [*b.patches, b.cls], strict=True):
        assert x.dtype == y.dtype == torch.float32
        assert torch.equal(x, y)


def _count_images(monkeypatch: pytest.MonkeyPatch, backbone: ClipBackbone) -> list[int]:
    """Record the batch size of every backbone call."""
    calls: list[int] = []
    forward = backbone.forward

    def counting(images: torch.Tensor) -> Features:
        calls.append(images.shape[0])
        return forward(images)

    monkeypatch.setattr(backbone, "forward", counting)
    return calls


# ------------------------------------------------------------------ values and stats


def test_values_equal_the_backbone_output(backbone, dataset):
    cache = FeatureCache(backbone, batch_size=N_TEST, progress=False)
    out = cache.features(dataset)
    _assert_features_equal(out, _direct(backbone, dataset, list(range(N_TEST))))
    assert out.grid == (SIZE // 8, SIZE // 8)
    assert out.cls.device == backbone.device
    # reordered and repeated indices come back in the order asked for
    picked = cache.features(dataset, [4, 1, 4])
    for got, full in zip([*picked.patches, picked.cls], [*out.patches, out.cls], strict=True):
        assert torch.equal(got, full[[4, 1, 4]])


def test_each_image_is_encoded_once_in_batches(monkeypatch, backbone, dataset):
    calls = _count_images(monkeypatch, backbone)
    cache = FeatureCache(backbone, batch_size=4, progress=False)
    cache.features(dataset, [1, 1, 2])
    assert calls == [2]
    assert cache.stats == {"hits": 1, "misses": 2, "disk_hits": 0}  # the repeat is a hit
    cache.features(dataset)  # 4 images missing: one batch of 4
    assert calls == [2, 4]
    cache.features(dataset, [5, 0])
    cache.features(dataset)
    assert calls == [2, 4]  # the second and later calls hit only
    assert cache.stats == {"hits": 1 + 2 + 2 + N_TEST, "misses": N_TEST, "disk_hits": 0}
    assert len(cache) == N_TEST


@settings(max_examples=10)
@given(st.lists(st.lists(st.integers(0, N_TEST - 1), min_size=1, max_size=8), max_size=4))
def test_any_request_sequence_matches_the_backbone(backbone, dataset, reference, requests):
    cache = FeatureCache(backbone, progress=False)
    for indices in requests:
        out = cache.features(dataset, indices)
        for got, full in zip(
            [*out.patches, out.cls], [*reference.patches, reference.cls], strict=True
        ):
            torch.testing.assert_close(got, full[indices], rtol=1e-5, atol=1e-5)
    stats = cache.stats
    assert sum(stats.values()) == sum(map(len, requests))
    assert stats["misses"] == len({i for r in requests for i in r}) == len(cache)


def test_keys_separate_backbones_files_and_preprocessing(backbone, dataset, root, tmp_path):
    other = ClipBackbone.tiny(seed=1, image_size=SIZE)
    a = FeatureCache(backbone, tmp_path, progress=False)
    b = FeatureCache(other, tmp_path, progress=False)
    fa, fb = a.features(dataset, [0, 1]), b.features(dataset, [0, 1])
    assert b.stats == {"hits": 0, "misses": 2, "disk_hits": 0}  # seed 1 never reads seed 0
    assert not torch.equal(fa.cls, fb.cls)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4

    # another normalisation: other key
    raw = AnomalyDataset(root, "grass", "test", image_size=SIZE, mean=None, std=None)
    a.features(raw, [0])
    assert a.stats["misses"] == 3

    # a touched file (new modification time, same bytes): the same content, reused
    path = dataset.samples[1].path
    stat = os.stat(path)
    try:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        a.features(dataset, [0, 1])
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert a.stats == {"hits": 2, "misses": 3, "disk_hits": 0}


def _write_stored_png(path: Path, seed: int) -> None:
    """A random RGB PNG without compression: its byte size depends only on its pixel size."""
    gen = np.random.default_rng(seed)
    pixels = gen.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=0)


def test_other_bytes_with_the_same_size_and_mtime_are_recomputed(backbone, tmp_path):
    """Entries are keyed by content: a file replaced by other bytes of the same size, with
    its modification time set back, gets new features from memory and disk caches alike
    (the old size + mtime key served the stale features)."""
    root = synthesize_dataset(tmp_path / "data", ["grass"], 1, 4, image_size=SIZE)
    data = AnomalyDataset(root, "grass", "test", image_size=SIZE)
    path = data.samples[0].path
    _write_stored_png(path, seed=1)
    old = os.stat(path)
    store = {"store_dtype": torch.float32, "progress": False}
    cache = FeatureCache(backbone, tmp_path / "cache", **store)
    before = cache.features(data, [0])

    _write_stored_png(path, seed=2)  # in place: same inode
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    new = os.stat(path)
    assert (new.st_size, new.st_mtime_ns, new.st_ino) == (old.st_size, old.st_mtime_ns, old.st_ino)
    after = cache.features(data, [0])
    assert cache.stats == {"hits": 0, "misses": 2, "disk_hits": 0}
    _assert_features_equal(after, _direct(backbone, data, [0]))
    assert not torch.equal(after.cls, before.cls)
    # a later run with the same disk store reads the new image's entry, not the old one
    warm = FeatureCache(backbone, tmp_path / "cache", **store)
    _assert_features_equal(warm.features(data, [0]), after)
    assert warm.stats == {"hits": 0, "misses": 0, "disk_hits": 1}


def test_a_moved_data_set_reuses_the_disk_store(backbone, tmp_path):
    """Same bytes under another path are the same entry (the key holds no path)."""
    root = synthesize_dataset(tmp_path / "data", ["grass"], 1, 2, image_size=SIZE)
    first = FeatureCache(backbone, tmp_path / "cache", progress=False)
    first.features(AnomalyDataset(root, "grass", "test", image_size=SIZE))
    moved = tmp_path / "moved"
    os.replace(root, moved)
    again = FeatureCache(backbone, tmp_path / "cache", progress=False)
    again.features(AnomalyDataset(moved, "grass", "test", image_size=SIZE))
    assert again.stats == {"hits": 0, "misses": 0, "disk_hits": 2}


def test_weights_changed_after_construction_are_seen(backbone, dataset):
    changed = copy.deepcopy(backbone)
    cache = FeatureCache(changed, progress=False)
    before = cache.features(dataset, [0])
    with torch.no_grad():
        changed.model.visual.proj.mul_(2.0)
    after = cache.features(dataset, [0])
    assert cache.stats == {"hits": 0, "misses": 2, "disk_hits": 0}
    torch.testing.assert_close(after.cls, 2 * before.cls)


def test_fingerprint_sees_one_changed_weight(backbone):
    changed = copy.deepcopy(backbone)
    with torch.no_grad():
        changed.model.visual.transformer.resblocks[2].mlp.c_fc.weight[3, 5] += 1e-3
    assert backbone_fingerprint(copy.deepcopy(backbone)) == backbone_fingerprint(backbone)
    assert backbone_fingerprint(changed) != backbone_fingerprint(backbone)
    # the same object, changed in place after a first fingerprint: not a stale memo
    before = backbone_fingerprint(changed)
    with torch.no_grad():
        changed.model.visual.ln_post.bias[0] += 1e-3
    assert backbone_fingerprint(changed) != before
    fewer_vv = ClipBackbone.tiny(seed=0, image_size=SIZE, vv_blocks=1)
    assert backbone_fingerprint(fewer_vv) != backbone_fingerprint(backbone)
    other_text = copy.deepcopy(backbone)
    with torch.no_grad():
        other_text.model.token_embedding.weight.add_(1.0)  # text tower: image features unchanged
    assert backbone_fingerprint(other_text) == backbone_fingerprint(backbone)


# ------------------------------------------------------------------ precision and memory


@pytest.mark.parametrize(("dtype", "size"), [(torch.float32, 4), (torch.float16, 2)])
def test_store_dtype_in_memory(backbone, dataset, dtype, size):
    cache = FeatureCache(backbone, store_dtype=dtype, batch_size=N_TEST, progress=False)
    out = cache.features(dataset)
    direct = _direct(backbone, dataset, list(range(N_TEST)))
    for got, want in zip([*out.patches, out.cls], [*direct.patches, direct.cls], strict=True):
        assert got.dtype == torch.float32
        assert torch.equal(got, want.to(dtype).float())
    per_image = len(backbone.layers) * 16 * backbone.embed_dim + backbone.embed_dim
    assert cache.memory_bytes == N_TEST * per_image * size


def test_disk_round_trip_is_the_float16_cast(backbone, dataset, tmp_path):
    directory = tmp_path / "new" / "cache"  # created
    cold = FeatureCache(backbone, directory, batch_size=N_TEST, progress=False)
    first = cold.features(dataset)
    direct = _direct(backbone, dataset, list(range(N_TEST)))
    for got, want in zip([*first.patches, first.cls], [*direct.patches, direct.cls], strict=True):
        assert torch.equal(got, want.half().float())
    files = sorted(p.name for p in directory.iterdir())
    assert len(files) == N_TEST
    assert all(name.endswith(".safetensors") for name in files)  # no temporary files left
    stored = safetensors.torch.load_file(str(directory / files[0]))
    assert stored["patches"].dtype == torch.float16
    assert tuple(stored["patches"].shape) == (len(backbone.layers), 16, backbone.embed_dim)

    warm = FeatureCache(backbone, directory, progress=False)
    _assert_features_equal(warm.features(dataset), first)  # a warm run equals the cold one
    assert warm.stats == {"hits": 0, "misses": 0, "disk_hits": N_TEST}
    warm.features(dataset, [2])
    assert warm.stats["hits"] == 1


def test_memory_false_reads_the_disk_every_time(backbone, dataset, tmp_path):
    cache = FeatureCache(backbone, tmp_path, memory=False, progress=False)
    first = cache.features(dataset, [0, 3])
    second = cache.features(dataset, [3, 0])
    assert len(cache) == 0
    assert cache.memory_bytes == 0
    assert cache.stats == {"hits": 0, "misses": 2, "disk_hits": 2}
    assert torch.equal(second.cls, first.cls[[1, 0]])


def test_float16_overflow_raises(monkeypatch, backbone, dataset):
    forward = backbone.forward

    def huge(images: torch.Tensor) -> Features:
        out = forward(images)
        return Features([p * 1e6 for p in out.patches], out.cls, out.grid)

    monkeypatch.setattr(backbone, "forward", huge)
    with pytest.raises(ValueError, match=r"not finite in torch.float16.*store_dtype=torch.float32"):
        FeatureCache(backbone, store_dtype=torch.float16, progress=False).features(dataset, [0])


def test_an_interrupted_run_keeps_the_finished_batches(monkeypatch, backbone, dataset, tmp_path):
    forward = backbone.forward
    calls: list[int] = []

    def fail_second(images: torch.Tensor) -> Features:
        calls.append(images.shape[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return forward(images)

    monkeypatch.setattr(backbone, "forward", fail_second)
    cache = FeatureCache(backbone, tmp_path, batch_size=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        cache.features(dataset)
    assert len(cache) == 2
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    monkeypatch.setattr(backbone, "forward", forward)
    cache.features(dataset)
    assert cache.stats["misses"] == N_TEST  # the two finished images were not encoded again


# ------------------------------------------------------------------ broken disk entries


def test_corrupt_file_is_logged_and_recomputed(backbone, dataset, tmp_path, caplog):
    # batch_size=1: a recomputed image sees the same batch as the first time, so the
    # values match bit for bit
    first = FeatureCache(backbone, tmp_path, batch_size=1, progress=False).features(dataset, [0, 1])
    files = sorted(tmp_path.glob("*.safetensors"))
    files[0].write_bytes(b"not a safetensors file")
    cache = FeatureCache(backbone, tmp_path, batch_size=1, progress=False)
    with caplog.at_level(logging.WARNING, logger="resad_kit.engine.features"):
        again = cache.features(dataset, [0, 1])
    assert "cannot read" in caplog.text
    assert str(files[0]) in caplog.text
    assert cache.stats == {"hits": 0, "misses": 1, "disk_hits": 1}
    _assert_features_equal(again, first)
    # the file was rewritten: a third cache reads both from disk
    third = FeatureCache(backbone, tmp_path, progress=False)
    third.features(dataset, [0, 1])
    assert third.stats["disk_hits"] == 2


def test_file_of_another_key_is_ignored(backbone, dataset, tmp_path, caplog):
    FeatureCache(backbone, tmp_path, progress=False).features(dataset, [0, 1])
    a, b = sorted(tmp_path.glob("*.safetensors"))
    a.write_bytes(b.read_bytes())  # right format, wrong image
    cache = FeatureCache(backbone, tmp_path, progress=False)
    with caplog.at_level(logging.WARNING, logger="resad_kit.engine.features"):
        cache.features(dataset, [0, 1])
    assert "does not match" in caplog.text
    assert cache.stats == {"hits": 0, "misses": 1, "disk_hits": 1}


def test_failed_write_is_logged_and_the_run_goes_on(
    monkeypatch, backbone, dataset, tmp_path, caplog
):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)  # the disk store's writer
    cache = FeatureCache(backbone, tmp_path, progress=False)
    with caplog.at_level(logging.WARNING, logger="resad_kit.engine.features"):
        out = cache.features(dataset, [0])
    assert "disk full" in caplog.text
    assert out.cls.shape == (1, backbone.embed_dim)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ loading and progress


def test_worker_processes_give_the_same_values(backbone, dataset):
    plain = FeatureCache(backbone, batch_size=3, progress=False).features(dataset)
    workers = FeatureCache(backbone, batch_size=3, num_workers=2, progress=False)
    _assert_features_equal(workers.features(dataset), plain)


def test_progress_bar_switch(backbone, dataset, capsys):
    FeatureCache(backbone, progress=False).features(dataset, [0])
    assert capsys.readouterr().err == ""
    FeatureCache(backbone, progress=True).features(dataset, [0])
    assert "features grass/test" in capsys.readouterr().err


@pytest.mark.gpu
def test_cuda_backbone_gets_cuda_features(dataset):
    backbone = ClipBackbone.tiny(seed=0, image_size=SIZE).to("cuda")
    cache = FeatureCache(backbone, progress=False)
    out = cache.features(dataset, [0, 1])
    assert out.cls.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in out.patches)
    assert next(iter(cache._entries.values())).cls.device.type == "cpu"  # held on the CPU
    cpu = ClipBackbone.tiny(seed=0, image_size=SIZE)
    assert backbone_fingerprint(backbone) == backbone_fingerprint(cpu)
    torch.testing.assert_close(
        out.cls.cpu(), _direct(cpu, dataset, [0, 1]).cls, rtol=1e-3, atol=1e-3
    )


# ------------------------------------------------------------------ errors


def test_bad_requests_raise(backbone, dataset, root):
    cache = FeatureCache(backbone, progress=False)
    with pytest.raises(ValueError, match=r"`indices` must lie in \[0, 6\).*\[6, -1\]"):
        cache.features(dataset, [0, 6, -1])
    with pytest.raises(ValueError, match="must not be empty"):
        cache.features(dataset, [])
    with pytest.raises(ValueError, match="sequence of ints"):
        cache.features(dataset, [0.5])
    big = AnomalyDataset(root, "grass", "test", image_size=2 * SIZE)
    with pytest.raises(ValueError, match=r"image_size is 64 but the backbone is built for .*32"):
        cache.features(big, [0])
    with pytest.raises(TypeError, match="AnomalyDataset"):
        cache.features([dataset[0]], [0])
    assert cache.stats == {"hits": 0, "misses": 0, "disk_hits": 0}


def test_bad_arguments_raise(backbone, tmp_path):
    with pytest.raises(ValueError, match="`memory=False` needs a `directory`"):
        FeatureCache(backbone, memory=False)
    with pytest.raises(ValueError, match="store_dtype"):
        FeatureCache(backbone, store_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="batch_size"):
        FeatureCache(backbone, batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        FeatureCache(backbone, num_workers=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        FeatureCache(backbone, tmp_path / "file")
    with pytest.raises(TypeError, match="ClipBackbone"):
        FeatureCache(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------ with the composer


def test_cached_features_drive_res2clip_like_images(backbone, dataset, root):
    train = AnomalyDataset(root, "grass", "train", image_size=SIZE)
    cache = FeatureCache(backbone, batch_size=N_TEST, progress=False)
    from_images = Res2CLIP(backbone).fit_references(train.images([0, 1]))
    from_cache = Res2CLIP(backbone).fit_references(cache.features(train, [0, 1]))
    want = from_images(dataset.images(list(range(N_TEST))))
    got = from_cache(cache.features(dataset))
    assert got.anomaly_map.shape == want.anomaly_map.shape == (N_TEST, SIZE, SIZE)
    torch.testing.assert_close(got.image_score, want.image_score, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.anomaly_map, want.anomaly_map, rtol=1e-5, atol=1e-5)


def test_clear_drops_memory_but_keeps_the_disk(backbone, dataset, tmp_path):
    cache = FeatureCache(backbone, tmp_path, progress=False)
    first = cache.features(dataset, [0, 1])
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0
    assert cache.memory_bytes == 0
    again = cache.features(dataset, [0, 1])
    assert cache.stats["disk_hits"] == 2
    assert torch.equal(again.cls, first.cls)


# ------------------------------------------------------------------ tap modes (AF-CLIP)


def test_tap_output_and_tap_cls_are_part_of_the_key():
    """Regression: the fingerprint ignored ``tap_output``, so a residual-tap backbone would
    have been served the projected features of a cache filled by the same weights."""
    projected = ClipBackbone.tiny(seed=0, image_size=SIZE, vv_blocks=0)
    residual = ClipBackbone.tiny(seed=0, image_size=SIZE, vv_blocks=0, tap_output="residual")
    with_cls = ClipBackbone.tiny(seed=0, image_size=SIZE, vv_blocks=0, tap_cls=True)
    prints = {backbone_fingerprint(b) for b in (projected, residual, with_cls)}
    assert len(prints) == 3


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_residual_taps_and_tap_cls_are_cached(dataset, tmp_path, store):
    """A residual-tap backbone with ``tap_cls`` (AF-CLIP's): patches of the residual width
    and the taps' CLS tokens come back equal to the backbone's own output, from memory
    and from a disk store read by a fresh cache."""
    backbone = ClipBackbone.tiny(
        seed=0, image_size=SIZE, vv_blocks=0, tap_output="residual", tap_cls=True
    )
    direct = _direct(backbone, dataset, list(range(N_TEST)))
    cache = FeatureCache(
        backbone, directory=tmp_path, batch_size=N_TEST, progress=False, store_dtype=torch.float32
    )
    out = cache.features(dataset)
    if store == "disk":
        fresh = FeatureCache(
            backbone,
            directory=tmp_path,
            batch_size=N_TEST,
            progress=False,
            store_dtype=torch.float32,
        )
        calls = _count_images(pytest.MonkeyPatch(), backbone)
        out = fresh.features(dataset)
        assert calls == []  # every entry came from the disk
    _assert_features_equal(out, direct)
    assert out.tap_cls is not None
    assert len(out.tap_cls) == len(backbone.layers)
    for got, want in zip(out.tap_cls, direct.tap_cls, strict=True):
        assert got.shape == (N_TEST, backbone.tap_dim)
        assert torch.equal(got, want)


def test_an_entry_without_tap_cls_is_recomputed(dataset, tmp_path, caplog):
    """A file written without ``tap_cls`` (e.g. by hand, or an older writer) for a
    backbone that needs it is logged and recomputed, never returned without it."""
    backbone = ClipBackbone.tiny(seed=0, image_size=SIZE, vv_blocks=0, tap_cls=True)
    cache = FeatureCache(
        backbone, directory=tmp_path, batch_size=N_TEST, progress=False, store_dtype=torch.float32
    )
    cache.features(dataset, [0])
    (path,) = tmp_path.glob("*.safetensors")
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    del tensors["tap_cls"]
    safetensors.torch.save_file(tensors, str(path), metadata=meta)
    fresh = FeatureCache(
        backbone, directory=tmp_path, batch_size=N_TEST, progress=False, store_dtype=torch.float32
    )
    with caplog.at_level(logging.WARNING, logger="resad_kit.engine.features"):
        out = fresh.features(dataset, [0])
    assert "holds no tap_cls" in caplog.text
    assert torch.equal(out.tap_cls[0], _direct(backbone, dataset, [0]).tap_cls[0])
