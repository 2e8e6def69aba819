"""Every usage error of examples/res2clip_full.py is one line on stderr and exit status 2,
with no traceback, before any training (the table below: one row per bad flag set).

Before, 20 of these gave a traceback, and duplicate `--shots`/`--seeds` failed in
`write_results` after all training and evaluation, losing the run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "res2clip_full.py"
TINY = ["--backbone", "tiny", "--device", "cpu", "--no-progress"]

# (id, flags; "{tmp}" is the test's temporary folder, "{file}" a file in it, expected words)
BAD_FLAGS = [
    ("duplicate shots", ["--shots", "1", "1"], "--shots must be distinct"),
    ("zero shots (res2clip)", ["--shots", "0", "1"], "--shots 0 (zero-shot) is not a setting"),
    ("negative shots", ["--shots", "-2"], "--shots must be ≥ 1"),
    ("duplicate seeds", ["--seeds", "111", "111"], "--seeds must be distinct"),
    ("negative seed", ["--seeds", "-1"], "--seeds must be ≥ 0"),
    ("seed above 2**32-1", ["--seeds", str(2**32)], "≤ 4294967295"),
    ("non-integer shots", ["--shots", "two"], "invalid int value"),
    ("non-integer epochs", ["--epochs", "1.5"], "invalid int value"),
    ("zero image size", ["--image-size", "0"], "--image-size must be a multiple"),
    ("image size not a patch multiple", ["--image-size", "30"], "patch size 8"),
    ("huge image size", ["--image-size", "80000"], "--image-size"),
    ("zero eval size", ["--eval-size", "0"], "--eval-size must be between 16"),
    ("eval size without room for a defect", ["--eval-size", "4"], "--eval-size must be between"),
    ("negative heatmaps", ["--heatmaps", "-1"], "--heatmaps must be ≥ 0"),
    ("zero epochs", ["--epochs", "0"], "--epochs must be ≥ 1"),
    ("zero batch size", ["--batch-size", "0"], "--batch-size must be ≥ 1"),
    ("zero eval batch size", ["--eval-batch-size", "0"], "--eval-batch-size must be ≥ 1"),
    ("missing CUDA device index", ["--device", "cuda:99"], "--device cuda:99"),
    ("unknown device", ["--device", "gpu0"], "--device 'gpu0' is not a device"),
    ("out is a file", ["--out", "{file}"], "is a file, not a folder"),
    ("out under a file", ["--out", "{file}/run"], "cannot be created"),
    ("cache dir is a file", ["--cache-dir", "{file}"], "--cache-dir"),
    ("checkpoint with tiny", ["--checkpoint", "{file}"], "--backbone tiny has random weights"),
    ("trust without a checkpoint", ["--trust-checkpoint"], "--trust-checkpoint needs"),
    ("missing data root", ["--data-root", "{tmp}/nowhere"], "is not a folder"),
    ("empty data root", ["--data-root", "{tmp}"], "no data set found"),
    ("unknown data set", ["--datasets", "mvtec"], "--datasets ['mvtec'] unknown"),
    ("duplicate data sets", ["--datasets", "sample", "sample"], "--datasets must be distinct"),
    ("resume and overwrite", ["--resume", "--overwrite"], "pick one"),
    ("unknown mode", ["--mode", "zero-shot"], "invalid choice"),
    ("unknown flag", ["--epoch", "3"], "unrecognized arguments"),
    ("more shots than normal images", ["--shots", "7"], "--shots 7 needs 7 normal"),
    ("negative shots (afclip)", ["--method", "afclip", "--shots", "-1"], "--shots must be ≥ 0"),
    ("afclip is not training-free", ["--method", "afclip", "--mode", "training-free"], "has only"),
    ("winclip is not fine-tuned", ["--method", "winclip", "--mode", "fine-tune"], "has only"),
    ("afclip weights without afclip", ["--afclip-weights", "{tmp}"], "needs --method afclip"),
    (
        "afclip weights with the paper profile",
        ["--method", "afclip", "--afclip-weights", "{tmp}"],
        "needs --profile official",
    ),
    (
        "afclip weights not a folder",
        ["--method", "afclip", "--profile", "official", "--afclip-weights", "{tmp}/nowhere"],
        "is not a folder (the official repository",
    ),
    (
        "afclip weights without the released files",
        ["--method", "afclip", "--profile", "official", "--afclip-weights", "{tmp}"],
        "visa_adaptor.pt is missing (the released model for sample",
    ),
    (
        "afclip data set unknown offline",
        ["--method", "afclip", "--datasets", "dagm"],
        "--datasets ['dagm'] unknown",
    ),
]


def _argv(flags: list[str], tmp: Path) -> list[str]:
    file = tmp / "a_file"
    file.write_text("x")
    argv = [f.format(tmp=tmp, file=file) for f in flags]
    if "--out" not in argv:
        argv += ["--out", str(tmp / "out")]
    if "--checkpoint" in argv:
        return [*argv, "--backbone", "tiny"]
    return TINY + argv


@pytest.fixture
def no_work(example, monkeypatch):
    """Training, the backbone and the evaluation fail the test if they are reached."""

    def fail(*args, **kwargs):
        raise AssertionError("work started before the flags were checked")

    for name in ("train", "build_backbone", "run_evaluation", "write_results"):
        monkeypatch.setattr(example, name, fail)


@pytest.mark.parametrize(
    ("flags", "words"), [r[1:] for r in BAD_FLAGS], ids=[r[0] for r in BAD_FLAGS]
)
def test_bad_flags_are_one_line_and_exit_2(example, no_work, tmp_path, capsys, flags, words):
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        example.main(_argv(flags, tmp_path))
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("resad-kit reproduce: error: "), err
    assert words in err, err
    assert "Traceback" not in err
    assert elapsed < 5.0
    out = tmp_path / "out"
    assert not any((out / name).exists() for name in example.RUN_OUTPUTS)


def test_cuda_without_cuda_is_a_usage_error(example, no_work, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        example.main([*TINY[:2], "--device", "cuda", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    prefix = "resad-kit reproduce: error: "
    assert err == prefix + "--device cuda: CUDA is not available on this machine\n"


def test_help_lists_the_new_flags(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--resume",
        "--overwrite",
        "--profile",
        "--shots",
        "--seeds",
        "--trust-checkpoint",
    ):
        assert flag in out


def test_usage_error_in_a_real_process(tmp_path):
    """Run as a script: exit status 2, one line on stderr, no traceback, nothing written."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *TINY, "--shots", "1", "1", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "res2clip_full.py: error: --shots must be distinct; [1] given more than once\n"
    )
    assert not (tmp_path / "o").exists()


def test_unreadable_data_set_is_one_line(example, no_work, tmp_path, capsys):
    """A data set the readers reject (an anomalous image without its mask) stops the run
    with the reader's message in one line, before any work."""
    import shutil

    from resad_kit.data import synthesize_dataset

    root = tmp_path / "data"
    synthesize_dataset(root / "mpdd", ["coins"], n_train=2, n_test=4, image_size=16)
    shutil.move(root / "mpdd" / "coins", root / "mpdd" / "tubes")
    next((root / "mpdd" / "tubes" / "ground_truth").rglob("*.png")).unlink()
    argv = [*TINY, "--data-root", str(root), "--allow-subset", "--mode", "training-free"]
    with pytest.raises(SystemExit) as exit_info:
        example.main([*argv, "--shots", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1, err
    assert "mask" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("trust", [False, True])
def test_trust_checkpoint_reaches_the_loader(example, tmp_path, monkeypatch, trust):
    """--trust-checkpoint is the only way the example lets a TorchScript file run its code."""
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    seen = {}

    def fake(model_name, pretrained, config, **kwargs):
        seen.update(kwargs, pretrained=pretrained)
        raise RuntimeError("stop")

    monkeypatch.setattr(example.ClipBackbone, "from_pretrained", fake)
    argv = ["--checkpoint", str(weights), "--out", str(tmp_path / "o")]
    args = example.build_parser().parse_args([*argv, "--trust-checkpoint"] if trust else argv)
    with pytest.raises(RuntimeError, match="stop"):
        example.build_backbone(args, torch.device("cpu"))
    assert seen["trust_checkpoint"] is trust
    assert seen["pretrained"] == str(weights)
