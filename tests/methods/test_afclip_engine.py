"""AF-CLIP through the engine: training without references at a constant learning rate,
a checkpoint that restores the same model, zero-shot and 1-shot evaluation, table.md."""

from __future__ import annotations

import pytest
import torch

from resad_kit.clip import ClipBackbone
from resad_kit.data import AnomalyDataset, synthesize_dataset
from resad_kit.engine.checkpoint import load_checkpoint, save_checkpoint
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.protocol import DatasetSpec, run_evaluation
from resad_kit.engine.results import write_results
from resad_kit.engine.training import TrainConfig, train
from resad_kit.methods import AFCLIP, AFCLIPConfig

SIZE = 32
FAST = TrainConfig.afclip(epochs=1, batch_size=4)
CONFIG = AFCLIPConfig.official_code(adapter_inner_dim=32, n_ctx=4, lr=1e-3)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(
        seed=2, image_size=SIZE, vv_blocks=0, tap_output="residual", tap_cls=True
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("afclip_data")
    return synthesize_dataset(path, ["grass", "brick"], n_train=2, n_test=4, image_size=SIZE)


@pytest.fixture(scope="module")
def cache(backbone) -> FeatureCache:
    return FeatureCache(backbone, progress=False)


@pytest.fixture(scope="module")
def trained(backbone, root, cache, tmp_path_factory):
    model = AFCLIP(backbone, CONFIG)
    before = {k: v.clone() for k, v in model.parts.state_dict().items()}
    data = [AnomalyDataset(root, c, "test", image_size=SIZE) for c in ("grass", "brick")]
    out = tmp_path_factory.mktemp("afclip_run")
    result = train(model, data, cache, FAST, out_dir=out, progress=False)
    return model, result, out, before


def test_training_runs_without_references_at_a_constant_rate(backbone, trained):
    model, result, _, before = trained
    assert [e["phase"] for e in result.epoch_losses] == ["train"]
    assert result.global_step == 2 == len(result.history)  # 8 queries, batch 4
    assert [h["lr"] for h in result.history] == [{"afclip": 1e-3}] * 2  # no warm-up, no decay
    assert set(result.history[0]) >= {"cls", "seg", "pal", "total"}
    moved = [k for k, v in model.parts.state_dict().items() if not torch.equal(v, before[k])]
    assert sorted(moved) == sorted(before)
    assert all(p.grad is None for p in backbone.parameters())


def test_the_checkpoint_restores_the_same_model(backbone, trained, tmp_path):
    model, _, out, _ = trained
    ckpt = load_checkpoint(out / "checkpoint.safetensors")
    assert ckpt.method == "afclip"
    assert AFCLIPConfig.from_dict(ckpt.model_config) == CONFIG
    assert ckpt.train_config["lr_schedule"] == "constant"
    fresh = AFCLIP(backbone, CONFIG)
    load_checkpoint(out / "checkpoint.safetensors", fresh)
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = model(images), fresh(images)
    assert torch.equal(a.anomaly_map, b.anomaly_map)
    assert torch.equal(a.image_score, b.image_score)
    save_checkpoint(tmp_path / "again.safetensors", fresh)  # and round-trips again
    other = AFCLIP(backbone, CONFIG.replace(alpha=0.5))
    with pytest.raises(ValueError, match="alpha"):
        load_checkpoint(tmp_path / "again.safetensors", other)


def test_zero_and_one_shot_evaluate_and_reach_the_table(trained, root, cache, tmp_path):
    model, _, _, _ = trained
    spec = DatasetSpec("synthetic", root, ("grass", "brick"))
    results = run_evaluation(
        {("fine_tuned", "synthetic"): model}, [spec], cache, shots=(0, 1), seeds=(0, 1),
        progress=False,
    )  # fmt: skip
    keys = [(r.category, r.shots, r.seed, r.method, r.mode) for r in results]
    assert keys == [
        (c, k, s, "afclip", "fine_tuned")
        for c in ("grass", "brick")
        for k, s in ((0, 0), (1, 0), (1, 1))
    ]
    assert model.shots == 1  # the protocol left the last fit in place
    files = write_results(
        results, tmp_path, backbone_label="tiny", trained=False, config={"method": "afclip"}
    )
    table = files["table"].read_text() if "table" in files else (tmp_path / "table.md").read_text()
    assert "AF-CLIP" in table
    assert "| 0 |" in table  # the zero-shot rows


def test_zero_shot_on_a_segmentation_only_set_reports_image_metrics_as_missing(
    trained, cache, tmp_path
):
    """A segmentation-only set (CVC-ClinicDB's ``images``/``masks`` tree, every image
    anomalous, no train split) runs zero-shot through the protocol: no train split is
    read, the pixel metrics are numbers, the image metrics are None and table.md shows
    "–" for them. Few-shot settings on such a set are refused with a clear error."""
    import numpy as np
    from PIL import Image

    from resad_kit.engine.protocol import evaluate_category

    model, _, _, _ = trained
    clinic = tmp_path / "data" / "CVC-ClinicDB"
    rng = np.random.default_rng(0)
    for i in range(3):
        for sub in ("images", "masks"):
            (clinic / sub).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(clinic / "images" / f"{i}.png")
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        mask[4 + i : 12 + i, 8:20] = 255
        Image.fromarray(mask).save(clinic / "masks" / f"{i}.png")
    spec = DatasetSpec("clinicdb", tmp_path / "data", ("CVC-ClinicDB",))
    (result,) = run_evaluation(
        {("fine_tuned", "clinicdb"): model}, [spec], cache, shots=(0,), seeds=(0,), progress=False
    )
    assert result.n_images == 3
    assert all(result.metrics[k] is None for k in ("I-AUROC", "I-AP", "I-F1max"))
    assert all(0.0 <= result.metrics[k] <= 1.0 for k in ("P-AUROC", "P-AP", "PRO"))
    write_results([result], tmp_path / "out", backbone_label="tiny", trained=False, config={})
    assert "–" in (tmp_path / "out" / "table.md").read_text()
    test = AnomalyDataset(tmp_path / "data", "CVC-ClinicDB", "test", image_size=SIZE)
    with pytest.raises(ValueError, match="need the train split"):
        evaluate_category({"fine_tuned": model}, "clinicdb", test, None, cache, shots=(0, 1))
