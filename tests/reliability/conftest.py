"""Shared pieces of the reliability tests: the reproduce command loaded in-process
(``resad_kit.cli.reproduce``, which examples/res2clip_full.py wraps), simulated kills, and
one CPU thread (fast and repeatable on a shared machine)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import torch

# The smallest run that still trains twice (each offline data set trains the adapters
# evaluated on the other) and evaluates: 2 epochs of one step each, 1 shot, 1 seed.
FAST = [
    "--backbone", "tiny", "--image-size", "32", "--eval-size", "16", "--epochs", "2",
    "--batch-size", "32", "--shots", "1", "--seeds", "111", "--heatmaps", "1",
    "--mode", "both", "--no-progress", "--device", "cpu",
]  # fmt: skip


class Killed(BaseException):
    """A simulated kill of the job (like SIGKILL, nothing catches it on the way out)."""


def load_example() -> ModuleType:
    """The module that runs ``resad-kit reproduce`` and examples/res2clip_full.py."""
    return importlib.import_module("resad_kit.cli.reproduce")


@pytest.fixture(scope="session")
def example() -> ModuleType:
    return load_example()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's runs (its reference run included), then back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fast() -> list[str]:
    """:data:`FAST`, the flags of the smallest complete run."""
    return list(FAST)


@pytest.fixture(scope="session")
def killed() -> type[Killed]:
    """The :class:`Killed` exception."""
    return Killed


@pytest.fixture
def kill_on_call(monkeypatch: pytest.MonkeyPatch) -> Any:
    """:func:`kill_on_call` bound to this test's ``monkeypatch``."""

    def bound(owner: Any, name: str, call: int, *, after: bool) -> list[int]:
        return _kill_on_call(monkeypatch, owner, name, call, after=after)

    return bound


def _kill_on_call(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, call: int, *, after: bool
) -> list[int]:
    """Make the ``call``-th call of ``owner.name`` raise :class:`Killed`.

    ``after=False`` kills before the call does anything, ``after=True`` right after it
    returned. Returns the list whose length counts the calls.
    """
    real = getattr(owner, name)
    calls: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == call and not after:
            raise Killed(f"{name} call {call}")
        result = real(*args, **kwargs)
        if len(calls) == call:
            raise Killed(f"after {name} call {call}")
        return result

    monkeypatch.setattr(owner, name, wrapper)
    return calls
