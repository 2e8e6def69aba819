"""`resad-kit reproduce --method finegrainedad` end to end, offline, on the tiny backbone.

One CLI run on the shipped MVTec AD sample (hazelnut, transistor) and the generated
synthetic data set; its records and the ours row of table.md's Table 1 block must equal
an independent run of `evaluate_finegrainedad` written here with the same settings (the
tiny backbone of seed 0, `FineGrainedADConfig.paper()` with the tiny backbone's memory
blocks 1 and 3, `TrainConfig.finegrainedad(epochs=2)`, 1 shot, seed 111, 32 px). Also:
a category without captions stops the run before any work with the loader's message and
the `--captions` flag; a `--captions` file supplies them; the flags FineGrainedAD has not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import pytest

from resad_kit.cli.reproduce import main
from resad_kit.cli.reproduce_args import build_parser, resolve_defaults
from resad_kit.cli.reproduce_data import SAMPLE_ROOT
from resad_kit.clip import ClipBackbone, mfsc
from resad_kit.clip.image_backbone import ImageBackbone
from resad_kit.data import synthesize_dataset
from resad_kit.engine import DatasetSpec, FeatureCache, TrainConfig, load_results
from resad_kit.engine.finegrainedad_protocol import evaluate_finegrainedad
from resad_kit.methods import FineGrainedADConfig

SIZE, EPOCHS = 32, 2
ARGS = [
    "--method", "finegrainedad", "--backbone", "tiny", "--device", "cpu", "--no-progress",
    "--shots", "1", "--seeds", "111", "--image-size", str(SIZE), "--epochs", str(EPOCHS),
    "--heatmaps", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finegrainedad") / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def direct_results(cli_run):
    """The same protocol, composed here from the engine's public pieces."""
    backbone = ClipBackbone.tiny(
        seed=0, image_size=SIZE, layers=(4,), vv_blocks=4, global_ln_post=True
    )
    specs = [
        DatasetSpec("sample", SAMPLE_ROOT, ("hazelnut", "transistor")),
        # the CLI generated it under --out (synthesize_dataset(..., seed=0)); checked below
        DatasetSpec("synthetic", cli_run / "data" / "synthetic", ("brick", "coins")),
    ]
    return evaluate_finegrainedad(
        specs,
        FeatureCache(ImageBackbone.wrap(backbone), progress=False),
        config=dataclasses.replace(FineGrainedADConfig.paper(), memory_layers=(1, 3)),
        train_config=TrainConfig.finegrainedad(epochs=EPOCHS),
        shots=(1,),
        seeds=(111,),
        heatmaps=0,
        progress=False,
    )


def _key(r) -> tuple:
    return (r.dataset, r.category, r.shots, r.seed, r.mode, r.method)


def test_the_synthetic_data_is_the_documented_generator_output(cli_run, tmp_path):
    """The direct run reads the CLI's synthetic folder: it must be the generator's."""
    again = synthesize_dataset(
        tmp_path / "s", ["brick", "coins"], n_train=6, n_test=8, image_size=128, seed=0
    )
    made = sorted(p.relative_to(again) for p in again.rglob("*.png"))
    theirs = cli_run / "data" / "synthetic"
    assert made == sorted(p.relative_to(theirs) for p in theirs.rglob("*.png"))
    assert all((again / p).read_bytes() == (theirs / p).read_bytes() for p in made)


def test_records_equal_a_direct_evaluate_finegrainedad(cli_run, direct_results):
    got = {_key(r): r for r in load_results(cli_run)}
    want = {_key(r): r for r in direct_results}
    assert sorted(got) == sorted(want)
    assert sorted(got) == sorted(
        (d, c, 1, 111, "fine_tuned", "finegrainedad")
        for d, cats in (("sample", ("hazelnut", "transistor")), ("synthetic", ("brick", "coins")))
        for c in cats
    )
    for key, record in want.items():
        assert got[key].references == record.references
        for name, value in record.metrics.items():
            mine = got[key].metrics[name]
            assert (mine is None) == (value is None), (key, name)
            if value is not None:
                assert mine == pytest.approx(value, abs=1e-12), (key, name)


def test_table1_block_shows_the_direct_means(cli_run, direct_results):
    table = (cli_run / "table.md").read_text()
    assert table.startswith("**WARNING")  # the tiny backbone is untrained
    assert "# FineGrainedAD results" in table
    cells = []
    for dataset in ("sample", "synthetic"):
        rows = [r for r in direct_results if r.dataset == dataset]
        image = statistics.fmean(r.metrics["I-AUROC"] for r in rows)
        pixel = statistics.fmean(r.metrics["P-AUROC"] for r in rows)
        assert math.isfinite(image)
        assert math.isfinite(pixel)
        cells.append(f"{100 * image:.1f}/{100 * pixel:.1f}")
    assert f"| ours | {' | '.join(cells)} |" in table


def test_config_and_report(cli_run):
    config = json.loads((cli_run / "config.json").read_text())
    assert config["method"]["fine_tuned"]["memory_layers"] == [1, 3]
    assert config["method"]["fine_tuned"]["temperature"] == "exp"  # --profile paper
    assert config["train"]["epochs"] == EPOCHS
    assert config["train"]["optimizer"] == "sgd"
    assert config["train"]["lr_schedule"] == "cosine"
    assert config["backbone"].count("+images") == 1  # the image-packing backbone
    assert (cli_run / "index.html").is_file()
    assert not (cli_run / "checkpoints").exists()  # no auxiliary training


def _synthetic_root(tmp_path, key: str, name: str):
    """``data/<key>/<name>``: a 32 px synthetic category (MVTec AD layout) under ``name``."""
    made = synthesize_dataset(tmp_path / f"made_{key}", ["coins"], 2, 2, image_size=SIZE)
    (tmp_path / "data" / key).mkdir(parents=True)
    (made / "coins").rename(tmp_path / "data" / key / name)
    return tmp_path / "data"


def test_a_category_without_captions_stops_before_any_work(tmp_path, capsys):
    root = _synthetic_root(tmp_path, "btad", "01")
    argv = [*ARGS, "--data-root", str(root), "--datasets", "btad", "--allow-subset"]
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "btad/01: load_captions: no captions for `category` '01'" in err
    assert "--captions FILE" in err
    assert not (out / "config.json").exists()  # stopped before any work


def test_captions_file_supplies_a_new_category(tmp_path):
    root = _synthetic_root(tmp_path, "btad", "01")
    shipped = Path(mfsc.__file__).with_name("mfsc_captions.json")
    coins = json.loads(shipped.read_text())["categories"]["coins"]
    file = tmp_path / "mine.json"
    file.write_text(json.dumps({"categories": {"01": coins}}))
    out = tmp_path / "run"
    argv = [*ARGS, "--data-root", str(root), "--datasets", "btad", "--allow-subset"]
    assert main([*argv, "--captions", str(file), "--out", str(out)]) == 0
    assert [(r.dataset, r.category) for r in load_results(out)] == [("btad", "01")]


def test_default_datasets_under_data_root_are_its_papers(tmp_path):
    """With --data-root, finegrainedad evaluates MVTec AD and VisA only (its Table 1)."""
    root = _synthetic_root(tmp_path, "mvtec", "bottle")
    _synthetic_root(tmp_path, "btad", "01")  # no captions: must not be touched
    out = tmp_path / "run"
    assert main([*ARGS, "--data-root", str(root), "--allow-subset", "--out", str(out)]) == 0
    assert [(r.dataset, r.category) for r in load_results(out)] == [("mvtec", "bottle")]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "4"], "trains on all K shots at once"),
        (["--shots", "0"], "--shots 0 (zero-shot) is not a setting of --method finegrainedad"),
        (["--mode", "training-free"], "has only"),
        (["--captions", "/nowhere.json"], "--captions /nowhere.json: no such file"),
    ],
)
def test_flags_it_has_not(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*ARGS, *extra, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_captions_flag_needs_finegrainedad(tmp_path, capsys):
    file = tmp_path / "mine.json"
    file.write_text("{}")
    with pytest.raises(SystemExit):
        main(["--backbone", "tiny", "--captions", str(file), "--out", str(tmp_path / "r")])
    assert "it needs --method finegrainedad" in capsys.readouterr().err


@pytest.mark.parametrize(("backbone", "eval_size"), [("paper", 400), ("tiny", None)])
def test_defaults_of_the_method(backbone, eval_size):
    """1/2/4 shots, the code's seed 111, 400 px maps with the real backbone (its
    `--resolution 400`), the input side with the tiny one."""
    args = build_parser().parse_args(["--method", "finegrainedad", "--backbone", backbone])
    resolve_defaults(args)
    assert (args.shots, args.seeds, args.eval_size) == ([1, 2, 4], [111], eval_size)
    args = build_parser().parse_args(["--method", "finegrainedad", "--eval-size", "256"])
    assert resolve_defaults(args).eval_size == 256


def test_select_epoch_on_test_is_labelled_warned_and_equals_the_direct_option(tmp_path):
    """The released code's best-on-test epoch, only under its flag: the records are the
    direct `evaluate_finegrainedad(select_epoch_on_test=True)`, labelled apart, warned."""
    out = tmp_path / "run"
    argv = [*ARGS, "--datasets", "synthetic", "--select-epoch-on-test", "--out", str(out)]
    with pytest.warns(UserWarning, match="TEST set"):
        assert main(argv) == 0
    backbone = ClipBackbone.tiny(
        seed=0, image_size=SIZE, layers=(4,), vv_blocks=4, global_ln_post=True
    )
    with pytest.warns(UserWarning, match="TEST set"):
        want = evaluate_finegrainedad(
            [DatasetSpec("synthetic", out / "data" / "synthetic", ("brick", "coins"))],
            FeatureCache(ImageBackbone.wrap(backbone), progress=False),
            config=dataclasses.replace(FineGrainedADConfig.paper(), memory_layers=(1, 3)),
            train_config=TrainConfig.finegrainedad(epochs=EPOCHS),
            select_epoch_on_test=True,
            shots=(1,),
            seeds=(111,),
            heatmaps=0,
            progress=False,
        )
    got = {_key(r): r.metrics for r in load_results(out)}
    assert sorted(got) == sorted(_key(r) for r in want)
    assert {k[-1] for k in got} == {"finegrainedad_test_selected"}
    for record in want:
        for name, value in record.metrics.items():
            assert got[_key(record)][name] == pytest.approx(value, abs=1e-12)
    assert "--select-epoch-on-test: each model keeps the epoch" in (out / "log.txt").read_text()


def test_select_epoch_on_test_needs_finegrainedad(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--backbone", "tiny", "--select-epoch-on-test", "--out", str(tmp_path / "r")])
    assert "it needs --method finegrainedad" in capsys.readouterr().err
