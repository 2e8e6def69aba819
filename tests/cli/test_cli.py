"""The `resad-kit` command: fast help without torch, help text on every flag, one error
line (once, on rank 0), the order data → weights → work, offline weights fail at once."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [["--help"], ["reproduce", "--help"], ["predict", "--help"]])
def test_help_does_not_import_torch(argv):
    """`--help` answers from the light modules only (torch takes seconds to import)."""
    code = (
        "import sys\n"
        "from resad_kit.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = ('torch', 'open_clip', 'matplotlib', 'PIL')\n"
        "print('HEAVY', sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    assert "usage: resad-kit" in done.stdout


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'resad-kit = "resad_kit.cli:main"' in text
    done = subprocess.run(
        [sys.executable, "-m", "resad_kit.cli", "nonsense"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 2
    assert "invalid choice: 'nonsense'" in done.stderr


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from resad_kit.cli import predict_args, reproduce_args

    return {"reproduce": reproduce_args.build_parser(), "predict": predict_args.build_parser()}


@pytest.mark.parametrize("command", ["reproduce", "predict"])
def test_every_flag_has_help_text(command):
    parser = _parsers()[command]
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 10
    missing = [a.option_strings[0] for a in flags if not (a.help and a.help.strip())]
    assert missing == []


def test_errors_print_once_under_torchrun(monkeypatch, capsys):
    """Every rank exits with status 2; only rank 0 prints the line."""
    from resad_kit.cli._common import Parser

    parser = Parser(prog="x")
    for rank, printed in (("1", ""), ("0", "x: error: bad flag\n")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as info:
            parser.error("bad\n  flag")
        assert info.value.code == 2
        assert capsys.readouterr().err == printed


def test_one_line_per_log_event():
    import logging

    from resad_kit.cli._common import OneLineFormatter

    record = logging.LogRecord("n", logging.INFO, "f", 1, "a\nb\n\n  c", None, None)
    assert OneLineFormatter("%(message)s").format(record) == "a ⏎ b ⏎   c"


def test_data_root_is_checked_before_the_weights(tmp_path, capsys):
    """A wrong --data-root is reported even when the weights are missing too."""
    from resad_kit.cli.reproduce import main

    argv = ["--data-root", str(tmp_path / "nowhere"), "--checkpoint", str(tmp_path / "w.pt")]
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "o")])
    assert "--data-root" in capsys.readouterr().err


def test_offline_without_weights_fails_at_once(tmp_path, monkeypatch, capsys):
    """HF_HUB_OFFLINE is honoured: the hub client is put offline (no retries) and the
    message says why, after the data checks and before any work."""
    from huggingface_hub import constants

    from resad_kit.cli import reproduce
    from resad_kit.cli._common import offline_reason
    from resad_kit.clip import WeightsNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert offline_reason() == "HF_HUB_OFFLINE=1 is set"
    seen = {}

    def loader(*args, **kwargs):
        seen["offline"] = constants.HF_HUB_OFFLINE
        raise WeightsNotFoundError("no cached copy of the 'openai' weights")

    def no_work(*args, **kwargs):
        raise AssertionError("work started without weights")

    monkeypatch.setattr(reproduce.ClipBackbone, "from_pretrained", loader)
    monkeypatch.setattr(reproduce, "train", no_work)
    argv = ["--device", "cpu", "--no-progress", "--shots", "1", "--seeds", "1"]
    with pytest.raises(SystemExit) as info:
        reproduce.main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert seen == {"offline": True}
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert "Offline (HF_HUB_OFFLINE=1 is set)" in line
    assert "--backbone tiny" in line


def test_no_network_is_detected_quickly(monkeypatch):
    """An unreachable host is reported (name resolution or connection), not retried."""
    from resad_kit.cli._common import offline_reason

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    reason = offline_reason(host="resad-kit.invalid", timeout=1.0)
    assert reason is not None
    assert reason.startswith("no network")


def test_log_lines_and_progress_bars_do_not_overwrite_each_other(tmp_path, monkeypatch):
    """While the run works, log records go through tqdm (logging_redirect_tqdm), so a
    line is printed above the progress bar instead of through it."""
    import logging

    from resad_kit.cli import reproduce

    class Stop(BaseException):
        pass

    seen = {}

    def backbone(*args, **kwargs):
        seen["handlers"] = [type(h).__name__ for h in logging.getLogger().handlers]
        raise Stop

    monkeypatch.setattr(reproduce, "build_backbone", backbone)
    argv = ["--backbone", "tiny", "--device", "cpu", "--shots", "1", "--seeds", "1"]
    with pytest.raises(Stop):
        reproduce.main([*argv, "--out", str(tmp_path / "o")])
    assert "_TqdmLoggingHandler" in seen["handlers"]
    assert "StreamHandler" not in seen["handlers"]  # stderr goes through tqdm.write
