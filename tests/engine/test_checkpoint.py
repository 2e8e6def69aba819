"""Tests of the safetensors checkpoints (resad_kit.engine.checkpoint)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import resad_kit.engine.atomic as atomic_module
from resad_kit.clip import ClipBackbone
from resad_kit.engine._checkpoint_codec import checksum
from resad_kit.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from resad_kit.engine.schedule import warmup_cosine_scheduler
from resad_kit.engine.training import TrainConfig
from resad_kit.methods import NearestNeighbor, NearestNeighborConfig, Res2CLIP, Res2CLIPConfig
from resad_kit.nn import LocalConvAdapter, ResidualAdapter

FINE_TUNED = Res2CLIPConfig.paper(mode="fine_tuned")


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(image_size=32)


def _perturbed(backbone: ClipBackbone, seed: int = 0) -> Res2CLIP:
    """A fine-tuned model whose adapters are no longer the identity (random weights)."""
    model = Res2CLIP(backbone, FINE_TUNED)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.adapters.modules():
            if isinstance(m, ResidualAdapter):
                m.fc2.weight.copy_(0.3 * torch.randn(m.fc2.weight.shape, generator=gen))
            elif isinstance(m, LocalConvAdapter):
                m.up.weight.copy_(0.3 * torch.randn(m.up.weight.shape, generator=gen))
    return model


def _adam_with_state(model: Res2CLIP) -> tuple[dict, dict]:
    groups = model.adapters.parameter_groups()
    opt = torch.optim.Adam(groups, betas=(0.5, 0.999))
    sched = warmup_cosine_scheduler(opt, 2, 8)
    for _ in range(3):
        for p in model.adapters.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        sched.step()
    return {"all": opt}, {"all": sched}


def _predict(model: Res2CLIP, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    refs = torch.randn(2, 3, 32, 32, generator=gen)
    queries = torch.randn(3, 3, 32, 32, generator=gen)
    with torch.no_grad():
        return model.fit_references(refs)(queries)


def test_save_load_gives_identical_predictions(backbone, tmp_path):
    trained = _perturbed(backbone)
    path = save_checkpoint(tmp_path / "ckpt.safetensors", trained, epoch=2, global_step=7)
    fresh = Res2CLIP(backbone, FINE_TUNED)
    before = _predict(fresh)
    ckpt = load_checkpoint(path, fresh)
    assert isinstance(ckpt, Checkpoint)
    assert (ckpt.epoch, ckpt.global_step) == (2, 7)
    for (name, a), b in zip(
        trained.adapters.state_dict().items(), fresh.adapters.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    expected, got = _predict(trained), _predict(fresh)
    assert torch.equal(got.anomaly_map, expected.anomaly_map)
    assert torch.equal(got.image_score, expected.image_score)
    # Not a vacuous check: the untrained model predicts something else.
    assert not torch.equal(before.anomaly_map, expected.anomaly_map)


def test_config_can_be_rebuilt_from_the_checkpoint(backbone, tmp_path):
    config = Res2CLIPConfig.official_code(mode="fine_tuned", loss_reduction="per_sample")
    model = Res2CLIP(backbone, config)
    path = save_checkpoint(tmp_path / "c.safetensors", model)
    ckpt = load_checkpoint(path)
    assert Res2CLIPConfig.from_dict(ckpt.model_config) == config
    assert ckpt.backbone == {
        "model_name": backbone.model_name,
        "weights": backbone.weights,
        "embed_dim": 32,
        "layers": list(backbone.layers),
        "image_size": 32,
        "patch_size": 8,
    }


def test_optimizer_scheduler_and_rng_states_round_trip(backbone, tmp_path):
    model = _perturbed(backbone)
    optimizers, schedulers = _adam_with_state(model)
    reference = random.Random(5)
    reference.random()
    rng = {"reference": reference.getstate(), "torch_cpu": torch.get_rng_state()}
    config = TrainConfig.paper(epochs=3)
    path = save_checkpoint(
        tmp_path / "c.safetensors",
        model,
        optimizers=optimizers,
        schedulers=schedulers,
        train_config=config,
        rng=rng,
        extra={"history": [{"total": 1.5, "lr": {"visual": 0.0}}], "inf": float("inf")},
    )

    fresh = Res2CLIP(backbone, FINE_TUNED)
    opt2 = {"all": torch.optim.Adam(fresh.adapters.parameter_groups(), betas=(0.5, 0.999))}
    sched2 = {"all": warmup_cosine_scheduler(opt2["all"], 0, 1)}
    ckpt = load_checkpoint(path, fresh, optimizers=opt2, schedulers=sched2, train_config=config)

    saved, loaded = optimizers["all"].state_dict(), opt2["all"].state_dict()
    assert saved["param_groups"] == loaded["param_groups"]  # names, lrs, betas tuple, ...
    assert loaded["param_groups"][0]["betas"] == (0.5, 0.999)
    assert saved["state"].keys() == loaded["state"].keys()
    for pid, state in saved["state"].items():
        for key, value in state.items():
            assert torch.equal(value, loaded["state"][pid][key]), (pid, key)
    assert sched2["all"].state_dict() == schedulers["all"].state_dict()
    restored = random.Random()
    restored.setstate(ckpt.rng["reference"])
    assert restored.random() == reference.random()
    assert torch.equal(ckpt.rng["torch_cpu"], rng["torch_cpu"])
    assert ckpt.train_config["betas"] == (0.5, 0.999)
    assert ckpt.extra == {"history": [{"total": 1.5, "lr": {"visual": 0.0}}], "inf": float("inf")}


def test_file_is_plain_safetensors_with_json_metadata(backbone, tmp_path):
    model = _perturbed(backbone)
    path = save_checkpoint(tmp_path / "c.safetensors", model)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert keys == {f"module.{k}" for k in model.adapters.state_dict()}
    assert (meta["format"], meta["version"]) == ("resad_kit.checkpoint", "2")
    assert json.loads(meta["resad_kit"])["model_config"]["mode"] == "fine_tuned"
    assert json.loads(meta["resad_kit"])["method"] == "res2clip"


def test_config_mismatch_is_a_clear_error_and_loads_nothing(backbone, tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", _perturbed(backbone))
    other = Res2CLIP(backbone, FINE_TUNED.replace(margin=0.5, loss_reduction="per_sample"))
    before = {k: v.clone() for k, v in other.adapters.state_dict().items()}
    with pytest.raises(ValueError, match=r"loss_reduction: checkpoint 'batch', now 'per_sample'"):
        load_checkpoint(path, other)
    with pytest.raises(ValueError, match=r"margin: checkpoint 1\.0, now 0\.5"):
        load_checkpoint(path, other)
    assert all(torch.equal(v, before[k]) for k, v in other.adapters.state_dict().items())


def test_backbone_mismatch(backbone, tmp_path, caplog):
    path = save_checkpoint(tmp_path / "c.safetensors", _perturbed(backbone))
    three_taps = Res2CLIP(ClipBackbone.tiny(image_size=32, layers=(1, 2, 4)), FINE_TUNED)
    with pytest.raises(ValueError, match=r"backbone differs .*layers: checkpoint \[1, 2, 3, 4\]"):
        load_checkpoint(path, three_taps)
    other_weights = Res2CLIP(ClipBackbone.tiny(seed=3, image_size=32), FINE_TUNED)
    with caplog.at_level(logging.WARNING, logger="resad_kit.engine.checkpoint"):
        load_checkpoint(path, other_weights)
    assert "trained on backbone weights" in caplog.text


def test_train_config_and_optimizer_name_mismatch(backbone, tmp_path):
    model = _perturbed(backbone)
    optimizers, schedulers = _adam_with_state(model)
    path = save_checkpoint(
        tmp_path / "c.safetensors",
        model,
        optimizers=optimizers,
        schedulers=schedulers,
        train_config=TrainConfig.paper(),
    )
    fresh = Res2CLIP(backbone, FINE_TUNED)
    with pytest.raises(ValueError, match=r"training configuration differs.*epochs: checkpoint 10"):
        load_checkpoint(path, fresh, train_config=TrainConfig.paper(epochs=4))
    wrong = {"visual": torch.optim.Adam(fresh.adapters.parameters())}
    with pytest.raises(ValueError, match=r"`optimizers` must have the names .*\['all'\]"):
        load_checkpoint(path, fresh, optimizers=wrong)
    # Nothing was loaded by the failed calls.
    assert not torch.equal(fresh.adapters.text.fc2.weight, model.adapters.text.fc2.weight)
    assert not wrong["visual"].state_dict()["state"]


def test_atomic_write_keeps_the_old_file_on_failure(backbone, tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.safetensors", _perturbed(backbone), epoch=1)
    original = path.read_bytes()

    def broken(fd):  # the temporary file is written, then the disk fills before it is synced
        raise OSError("disk full")

    monkeypatch.setattr(atomic_module.os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _perturbed(backbone, seed=1), epoch=2)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no temporary left
    assert load_checkpoint(path).epoch == 1


def test_clear_errors(backbone, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "garbage.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not a resad_kit checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    training_free = Res2CLIP(backbone)
    with pytest.raises(ValueError, match="training-free"):
        save_checkpoint(tmp_path / "tf.safetensors", training_free)
    path = save_checkpoint(tmp_path / "c.safetensors", _perturbed(backbone))
    with pytest.raises(ValueError, match="nothing to store"):
        load_checkpoint(path, training_free)
    with pytest.raises(TypeError, match=r"must be a resad_kit\.methods\.Method"):
        save_checkpoint(tmp_path / "m.safetensors", torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="cannot store a set"):
        save_checkpoint(tmp_path / "d.safetensors", _perturbed(backbone), extra={"s": {1}})
    assert not (tmp_path / "d.safetensors").exists()


# ---------------------------------------------------------------------------- integrity


def _data_offset(path: Path) -> int:
    """Where the tensor bytes start: after the 8-byte header length and the JSON header."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_flipped_tensor_byte_is_refused(backbone, tmp_path):
    """A checkpoint whose tensor bytes changed after saving raises a ValueError naming the
    file, instead of loading altered weights (the format and JSON metadata still parse)."""
    model = _perturbed(backbone)
    optimizers, _ = _adam_with_state(model)
    path = save_checkpoint(tmp_path / "c.safetensors", model, optimizers=optimizers)
    size = path.stat().st_size
    start = _data_offset(path)
    for offset in (start, (start + size) // 2, size - 1):  # first, middle and last byte
        broken = tmp_path / f"broken{offset}.safetensors"
        broken.write_bytes(path.read_bytes())
        _flip(broken, offset)
        fresh = Res2CLIP(backbone, FINE_TUNED)
        before = {k: v.clone() for k, v in fresh.adapters.state_dict().items()}
        with pytest.raises(ValueError, match=rf"{broken.name}' is corrupt: the SHA-256"):
            load_checkpoint(broken, fresh)
        assert all(torch.equal(v, before[k]) for k, v in fresh.adapters.state_dict().items())
    assert load_checkpoint(path).epoch == 0  # the intact file still loads


def test_altered_metadata_is_refused(backbone, tmp_path):
    """The checksum covers the JSON metadata too: an edited epoch is refused."""
    path = save_checkpoint(tmp_path / "c.safetensors", _perturbed(backbone), epoch=1)
    raw = path.read_bytes()
    assert raw.count(b'\\"epoch\\": 1,') == 1
    path.write_bytes(raw.replace(b'\\"epoch\\": 1,', b'\\"epoch\\": 7,'))
    with pytest.raises(ValueError, match="is corrupt"):
        load_checkpoint(path)


def test_a_checkpoint_without_checksum_loads_with_a_warning(backbone, tmp_path, caplog):
    """Files written before checksums existed still load, and the log says they are
    unverified."""
    model = _perturbed(backbone)
    path = save_checkpoint(tmp_path / "c.safetensors", model, epoch=2)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        metadata = dict(f.metadata())
    assert len(metadata.pop("sha256")) == 64
    save_file(tensors, str(path), metadata=metadata)
    fresh = Res2CLIP(backbone, FINE_TUNED)
    with caplog.at_level(logging.WARNING, logger="resad_kit.engine.checkpoint"):
        assert load_checkpoint(path, fresh).epoch == 2
    assert "has no checksum" in caplog.text
    assert torch.equal(fresh.adapters.text.fc2.weight, model.adapters.text.fc2.weight)


def test_training_data_record_is_stored_and_compared(backbone, tmp_path, caplog):
    """``data=`` round-trips through the file, an equal record passes, another one raises
    naming the difference, and a file without a record only warns."""
    record = {
        "format": "resad_kit.training_data/1",
        "datasets": [
            {
                "root": "/data/mvtec",
                "category": "grass",
                "split": "test",
                "layout": "mvtec",
                "image_size": 32,
                "mask_size": 32,
                "mask_interpolation": "nearest",
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
                "samples": [["grass/test/good/000.png", 0, "ab" * 32, None]],
            }
        ],
    }
    path = save_checkpoint(tmp_path / "c.safetensors", _perturbed(backbone), data=record)
    assert load_checkpoint(path).data == record
    load_checkpoint(path, data=record)
    other = json.loads(json.dumps(record))
    other["datasets"][0]["samples"][0][2] = "cd" * 32
    with pytest.raises(ValueError, match=r"training data differs.*'grass/test/good/000.png'"):
        load_checkpoint(path, data=other)
    old = save_checkpoint(tmp_path / "old.safetensors", _perturbed(backbone))
    assert load_checkpoint(old).data is None
    with caplog.at_level(logging.WARNING, logger="resad_kit.engine.checkpoint"):
        load_checkpoint(old, data=record)
    assert "no record of its training data" in caplog.text


# ---------------------------------------------------------------------------- methods


def _trainable_nn(backbone: ClipBackbone, seed: int = 0) -> NearestNeighbor:
    model = NearestNeighbor(backbone, NearestNeighborConfig.patchcore(trainable=True))
    with torch.no_grad():
        model.projection.weight.add_(
            0.1 * torch.randn(32, 32, generator=torch.Generator().manual_seed(seed))
        )
    return model


def test_a_checkpoint_of_one_method_is_refused_by_the_other(backbone, tmp_path):
    """Res2CLIP ↔ NearestNeighbor: loading is refused naming both methods, nothing loaded."""
    res2clip = save_checkpoint(tmp_path / "r.safetensors", _perturbed(backbone))
    knn = save_checkpoint(tmp_path / "n.safetensors", _trainable_nn(backbone))
    assert (load_checkpoint(res2clip).method, load_checkpoint(knn).method) == (
        "res2clip",
        "nearest_neighbor",
    )
    target = _trainable_nn(backbone, seed=1)
    before = target.projection.weight.clone()
    with pytest.raises(
        ValueError, match="checkpoint of method 'res2clip', model is 'nearest_neighbor'"
    ):
        load_checkpoint(res2clip, target)
    assert torch.equal(target.projection.weight, before)
    with pytest.raises(
        ValueError, match="checkpoint of method 'nearest_neighbor', model is 'res2clip'"
    ):
        load_checkpoint(knn, Res2CLIP(backbone, FINE_TUNED))


def test_another_method_round_trips_and_checks_its_config(backbone, tmp_path):
    """A NearestNeighbor checkpoint stores its projection and config and restores them."""
    trained = _trainable_nn(backbone)
    path = save_checkpoint(tmp_path / "n.safetensors", trained, epoch=1)
    ckpt = load_checkpoint(path)
    assert NearestNeighborConfig.from_dict(ckpt.model_config) == trained.config
    assert list(ckpt.state) == ["weight"]
    fresh = _trainable_nn(backbone, seed=2)
    load_checkpoint(path, fresh)
    assert torch.equal(fresh.projection.weight, trained.projection.weight)
    other = NearestNeighbor(backbone, NearestNeighborConfig.patchcore(trainable=True, k=2))
    with pytest.raises(ValueError, match=r"NearestNeighborConfig differs.*k: checkpoint 1, now 2"):
        load_checkpoint(path, other)
    with pytest.raises(ValueError, match="'nearest_neighbor', mode 'training_free'"):
        save_checkpoint(tmp_path / "free.safetensors", NearestNeighbor(backbone))


def test_a_first_format_res2clip_checkpoint_still_loads(backbone, tmp_path):
    """Files of the first format (adapters.* keys, no method name) load as Res2CLIP's."""
    model = _perturbed(backbone)
    path = save_checkpoint(tmp_path / "c.safetensors", model, epoch=3)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k.replace("module.", "adapters.", 1): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        payload = json.loads(f.metadata()["resad_kit"])
    del payload["method"]
    encoded = json.dumps(payload)
    metadata = {
        "format": "resad_kit.res2clip.checkpoint",
        "version": "1",
        "resad_kit": encoded,
        "sha256": checksum(encoded, tensors),
    }
    save_file(tensors, str(path), metadata=metadata)
    fresh = Res2CLIP(backbone, FINE_TUNED)
    ckpt = load_checkpoint(path, fresh)
    assert (ckpt.method, ckpt.epoch) == ("res2clip", 3)
    assert torch.equal(fresh.adapters.text.fc2.weight, model.adapters.text.fc2.weight)
    with pytest.raises(ValueError, match="checkpoint of method 'res2clip'"):
        load_checkpoint(path, _trainable_nn(backbone))
