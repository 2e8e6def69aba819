"""Pieces every ``resad-kit`` subcommand shares: usage errors, checks of flags, logging.

Nothing here imports torch at module level: ``resad-kit --help`` must answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "OneLineFormatter",
    "Parser",
    "UsageError",
    "check_device",
    "check_folder",
    "check_ints",
    "is_main_process",
    "offline_reason",
    "removing_new_handlers",
    "setup_logging",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UsageError(Exception):
    """A flag, or the data or folder it names, that makes the run impossible (exit 2)."""


def is_main_process() -> bool:
    """Rank 0 under ``torchrun`` (``RANK`` unset or ``0``), where messages are printed."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2.

    Under ``torchrun`` only rank 0 prints the error; every rank exits with status 2.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        line = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {line}\n" if is_main_process() else None)


def check_ints(name: str, values: Sequence[int], low: int, high: int | None = None) -> None:
    """Every value in ``[low, high]`` and no value twice."""
    bad = [v for v in values if v < low or (high is not None and v > high)]
    if bad:
        upper = f" and ≤ {high}" if high is not None else ""
        raise UsageError(f"{name} must be ≥ {low}{upper}; got {bad[0]}")
    if len(set(values)) != len(values):
        dup = sorted({v for v in values if values.count(v) > 1})
        raise UsageError(f"{name} must be distinct; {dup} given more than once")


def check_folder(flag: str, path: Path) -> None:
    """``path`` is a folder we can write to, or one we can create."""
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{flag} {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {path} is not writable")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path} cannot be created: {parent} is not writable")


def check_device(spec: str | None) -> None:
    """``--device``: cpu, cuda, cuda:N (that exists) or mps (when available)."""
    if spec is None:
        return
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {spec!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {spec}: there are {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {spec}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise UsageError(f"--device {spec}: use cpu, cuda, cuda:N or mps")


_TRUE = ("1", "true", "yes", "on")


def offline_reason(
    host: str = "huggingface.co", port: int = 443, timeout: float = 3.0
) -> str | None:
    """Why the weights cannot be downloaded now, or ``None`` when the hub is reachable.

    ``HF_HUB_OFFLINE`` set to a true value is honoured without any network access;
    otherwise one TCP connection to ``host:port`` is tried for at most ``timeout`` seconds
    (name resolution included), instead of the hub client's retries.
    """
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if value in _TRUE:
        return f"HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']} is set"
    error: list[BaseException] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            error.append(err)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if thread.is_alive():
        return f"no network: {host}:{port} did not answer within {timeout:g} s"
    if error:
        return f"no network: cannot reach {host}:{port} ({error[0]})"
    return None


class OneLineFormatter(logging.Formatter):
    """One line per event: newlines inside a message (a repr, a traceback) become ``⏎``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return " ⏎ ".join(line.rstrip() for line in text.splitlines() if line.strip())


def setup_logging(
    out: Path | None, main: bool, *, log_name: str = "log.txt"
) -> list[logging.Handler]:
    """Log to stderr (and, on the main rank, to ``out/log.txt``); returns the new handlers.

    Every record is one line (:class:`OneLineFormatter`). Wrap the work in
    :func:`tqdm.contrib.logging.logging_redirect_tqdm` so that log lines and progress bars
    do not overwrite each other.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if main and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(out / log_name, mode="a", encoding="utf-8"))
    formatter = OneLineFormatter(LOG_FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING, handlers=handlers, force=True
    )
    return handlers


@contextlib.contextmanager
def removing_new_handlers() -> Iterator[None]:
    """Remove (and close) the root logger handlers added inside the block, e.g. by
    :func:`setup_logging`, whatever happens: a command run in-process (tests, notebooks)
    leaves no open ``log.txt`` behind."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
