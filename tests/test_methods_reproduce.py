"""`resad-kit reproduce --method afclip` and `--method winclip` end to end, offline, on the
tiny backbone and a --data-root of small synthetic data sets under MVTec AD and VisA
category names (so the real auxiliary rule runs: VisA is evaluated by the model trained on
MVTec AD's test split): the runs finish, table.md holds the methods' rows in their
layouts, and `--afclip-weights` with files in the official repository's layout, written
here from the trained checkpoint, gives the same numbers as the natively trained weights."""

from __future__ import annotations

import json

import pytest
import torch

from resad_kit.cli.registry import METHODS, finegrainedad_config
from resad_kit.cli.reproduce import main
from resad_kit.clip import ClipBackbone
from resad_kit.data import synthesize_dataset
from resad_kit.engine.checkpoint import load_checkpoint, save_checkpoint
from resad_kit.engine.results import load_results
from resad_kit.engine.training import TrainConfig
from resad_kit.methods import AFCLIP, AFCLIPConfig, Method

SMALL = [
    "--backbone", "tiny", "--device", "cpu", "--no-progress", "--datasets", "visa",
    "--allow-subset", "--shots", "0", "1", "--seeds", "111", "--image-size", "32",
    "--heatmaps", "0",
]  # fmt: skip
CATEGORIES = {"mvtec": ("bottle", "cable"), "visa": ("candle", "capsules")}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """``mvtec/{bottle,cable}`` and ``visa/{candle,capsules}``: synthetic 32 px categories
    (MVTec AD layout) under standard category names."""
    root = tmp_path_factory.mktemp("data")
    for key, names in CATEGORIES.items():
        made = synthesize_dataset(
            root / f"made_{key}", ["brick", "coins"], n_train=2, n_test=4, image_size=32
        )
        (root / key).mkdir()
        for source, name in zip(("brick", "coins"), names, strict=True):
            (made / source).rename(root / key / name)
    return root


def _metrics(out) -> list[tuple]:
    return sorted(
        (r.dataset, r.category, r.shots, r.seed, r.mode, tuple(r.metrics.items()))
        for r in load_results(out)
    )


@pytest.fixture(scope="module")
def afclip_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("afclip") / "run"
    argv = [*SMALL, "--method", "afclip", "--profile", "official", "--epochs", "1"]
    assert main([*argv, "--data-root", str(data_root), "--out", str(out)]) == 0
    return out


def test_afclip_runs_end_to_end_and_fills_its_table_layouts(afclip_run):
    out = afclip_run
    results = load_results(out)
    assert {(r.method, r.mode, r.shots) for r in results} == {
        ("afclip", "fine_tuned", 0),
        ("afclip", "fine_tuned", 1),
    }
    assert {(r.dataset, r.category) for r in results} == {("visa", "candle"), ("visa", "capsules")}
    table = (out / "table.md").read_text()
    assert "# AF-CLIP results" in table
    assert "AF-CLIP Table 1 layout: zero-shot" in table
    assert "| Industrial | image | VisA | (" in table
    assert "| – | – |" in table  # a category subset: no paper number, no Δ
    assert "| 1-shot (AF-CLIP+) | ours |" in table
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 1
    assert config["train"]["batch_size"] == 8  # TrainConfig.afclip()
    assert config["train"]["lr_schedule"] == "constant"
    assert config["method"]["fine_tuned"]["prompt_position"] == "before_sot"
    assert config["backbone_config"]["tap_output"] == "residual"
    # trained on MVTec AD's test split, the auxiliary data set of VisA (AF-CLIP Sec. 4.1)
    assert (out / "checkpoints" / "mvtec" / "checkpoint.safetensors").is_file()
    assert not (out / "checkpoints" / "visa").exists()


def _write_official(checkpoint, weight_dir) -> None:
    """The trained adapter and prompts in the official repository's file layout:
    ``mvtec_adaptor.pt`` (the Adaptor's keys: ``attention.norm``, ``attention.attn.to_q``,
    ``attention.attn.to_out.0``) and ``mvtec_prompt.pt`` (a ``(1, M, W)`` Parameter)."""
    backbone = ClipBackbone.tiny(
        seed=0, image_size=32, vv_blocks=0, tap_output="residual", tap_cls=True
    )
    model = AFCLIP(backbone, AFCLIPConfig.official_code())
    load_checkpoint(checkpoint, model)
    official = {}
    for key, value in model.adapter.state_dict().items():
        key = ("attn." + key if key.startswith("to_") else key).replace("to_out.", "to_out.0.")
        official["attention." + key] = value.clone()
    weight_dir.mkdir()
    torch.save(official, weight_dir / "mvtec_adaptor.pt")
    torch.save(
        torch.nn.Parameter(model.prompts.ctx.detach().clone()), weight_dir / "mvtec_prompt.pt"
    )


def test_afclip_weights_in_the_official_layout_give_the_native_numbers(
    afclip_run, data_root, tmp_path
):
    """VisA is evaluated by the model trained on MVTec AD: the released `mvtec_*` files."""
    weights = tmp_path / "weight"
    _write_official(afclip_run / "checkpoints" / "mvtec" / "checkpoint.safetensors", weights)
    out = tmp_path / "released"
    argv = [*SMALL, "--method", "afclip", "--profile", "official", "--afclip-weights"]
    argv += [str(weights), "--data-root", str(data_root)]
    assert main([*argv, "--out", str(out)]) == 0
    assert not (out / "checkpoints").exists()  # no training
    assert _metrics(out) == _metrics(afclip_run)
    assert "released AF-CLIP weights for mvtec" in (out / "log.txt").read_text()


def test_winclip_runs_end_to_end_training_free(data_root, tmp_path):
    out = tmp_path / "run"
    argv = [*SMALL, "--method", "winclip", "--data-root", str(data_root)]
    assert main([*argv, "--out", str(out)]) == 0
    results = load_results(out)
    assert {(r.method, r.mode, r.shots) for r in results} == {
        ("winclip", "training_free", 0),
        ("winclip", "training_free", 1),
    }
    table = (out / "table.md").read_text()
    assert "# WinCLIP results" in table
    assert "| 0 | WinCLIP | ours (1 seed) |" in table
    assert "| 1 | WinCLIP+ | ours (1 seed) |" in table
    config = json.loads((out / "config.json").read_text())
    assert config["train"] is None
    assert config["backbone"].count("+windows") == 1  # the window-embedding backbone


@pytest.mark.parametrize("name", sorted(METHODS))
def test_registry_entries_agree_with_their_method_classes(name):
    """The registry's light copies of class facts (no torch at import) match the classes."""
    entry = METHODS[name]
    backbone = ClipBackbone.tiny(image_size=32, **entry.backbone.tiny)
    if entry.backbone.windows:
        from resad_kit.clip.windows import WindowBackbone

        backbone = WindowBackbone.wrap(backbone)
    if entry.backbone.images:
        from resad_kit.clip.image_backbone import ImageBackbone

        backbone = ImageBackbone.wrap(backbone)
    per_category = {"category": "coins", "tiny": True} if entry.per_category else {}
    model = entry.build(backbone, entry.modes[-1], "paper", **per_category)
    assert isinstance(model, Method)
    assert model.name == name
    assert type(model).supports_zero_shot == entry.zero_shot
    assert type(model).uses_training_references == entry.training_references
    assert (0 in entry.shots) == entry.zero_shot
    if entry.per_category:  # FineGrainedAD's copied facts
        from resad_kit.engine.paper_results import FINEGRAINEDAD_RESULTS
        from resad_kit.methods import FineGrainedAD, FineGrainedADConfig

        # the data sets and shots of its Table 1; the code's seed and 400 px maps
        assert {(d, k) for d in entry.datasets for k in entry.shots} == set(FINEGRAINEDAD_RESULTS)
        assert entry.seeds == (TrainConfig.finegrainedad().seed,)
        assert entry.train().epochs == TrainConfig.finegrainedad().epochs
        assert entry.eval_size == 400
        # the real backbone's memory blocks are the preset's; the tiny ones fit its 4 blocks
        assert finegrainedad_config("paper").memory_layers == (3, 8)
        assert finegrainedad_config("official") == FineGrainedADConfig.official_code()
        assert model.config.memory_layers == entry.tiny_config["memory_layers"]
        assert model.config.temperature == FineGrainedADConfig.paper().temperature
        FineGrainedAD(backbone, model.captions, model.vocabularies, model.config)  # fits
        recipe = entry.backbone
        assert (recipe.model, recipe.pretrained, recipe.patch) == (
            "ViT-B-16-plus-240", "laion400m_e32", 16,
        )  # fmt: skip
        assert recipe.config("paper").image_size == 240


def test_afclip_reads_the_medical_sets_under_data_root_and_reports_dashes(tmp_path):
    """A classification-only set (BrainMRI: no/, yes/) and a segmentation-only set
    (CVC-ClinicDB: images/, masks/) directly under --data-root, evaluated zero-shot with
    released-format weights (no auxiliary data needed): image metrics only for one, pixel
    metrics only for the other, the paper's Table 1 numbers beside them, "–" elsewhere."""
    import numpy as np
    from PIL import Image

    root, rng = tmp_path / "data", np.random.default_rng(0)
    for sub in ("no", "yes"):
        (root / "BrainMRI" / sub).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "BrainMRI" / sub / f"{i}.jpg")
    for sub in ("images", "masks"):
        (root / "CVC-ClinicDB" / sub).mkdir(parents=True)
    for i in range(3):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "CVC-ClinicDB" / "images" / f"{i}.png")
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[4 + i : 12, 4:12] = 255
        Image.fromarray(mask).save(root / "CVC-ClinicDB" / "masks" / f"{i}.png")
    backbone = ClipBackbone.tiny(
        seed=0, image_size=32, vv_blocks=0, tap_output="residual", tap_cls=True
    )
    model = AFCLIP(backbone, AFCLIPConfig.official_code())
    checkpoint = tmp_path / "native.safetensors"
    save_checkpoint(checkpoint, model)
    _write_official(checkpoint, tmp_path / "weight")
    out = tmp_path / "run"
    argv = [
        "--method", "afclip", "--backbone", "tiny", "--image-size", "32", "--device", "cpu",
        "--data-root", str(root), "--profile", "official", "--afclip-weights",
        str(tmp_path / "weight"), "--shots", "0", "--heatmaps", "0", "--no-progress",
    ]  # fmt: skip
    assert main([*argv, "--out", str(out)]) == 0
    by_set = {r.dataset: r.metrics for r in load_results(out)}
    assert sorted(by_set) == ["brainmri", "clinicdb"]
    assert by_set["brainmri"]["P-AUROC"] is None
    assert by_set["brainmri"]["I-AUROC"] is not None
    assert by_set["clinicdb"]["I-AUROC"] is None
    assert by_set["clinicdb"]["PRO"] is not None
    table = (out / "table.md").read_text()
    assert "| Medical | image | BrainMRI | (" in table
    assert "| (95.2, 96.3) |" in table
    assert "| Medical | pixel | ClinicDB | (" in table
    assert "| (87.1, 70.0) |" in table
    assert "| image | ClinicDB |" not in table


@pytest.mark.parametrize(
    ("name", "field", "paper", "official"),
    [
        ("afclip", "prompt_position", "after_sot", "before_sot"),
        ("afclip", "aggregation_border", "renormalize", "zero"),
        ("winclip", "prompts", "paper", "anomalib"),
    ],
)
def test_profile_selects_the_method_preset(name, field, paper, official):
    entry = METHODS[name]
    backbone = ClipBackbone.tiny(image_size=32, **entry.backbone.tiny)
    got = {p: getattr(entry.build(backbone, entry.modes[0], p).config, field) for p in
           ("paper", "official")}  # fmt: skip
    assert got == {"paper": paper, "official": official}
