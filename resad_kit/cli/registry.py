"""The methods the ``resad-kit`` commands can run, by name (``--method``).

Each entry says how to build a model of one mode on a backbone; the run does the rest
(training through :func:`resad_kit.engine.train`, evaluation through
:func:`resad_kit.engine.run_evaluation`, prediction through ``fit_references`` and
``forward``), whatever the method. To add one, append a :class:`MethodEntry` to
:data:`METHODS` (its builder imports lazily, so that ``--help`` stays fast).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resad_kit.clip import ClipBackbone
    from resad_kit.methods import Method

__all__ = ["METHODS", "MethodEntry", "build_method", "method_names"]


@dataclass(frozen=True)
class MethodEntry:
    """One method of the command line.

    Attributes:
        name: the ``--method`` value (the method's ``Method.name``).
        title: what the help text calls it.
        modes: the modes it has (``"training_free"``, ``"fine_tuned"``).
        build: ``(backbone, mode, profile) → Method``; ``profile`` is ``"paper"`` or
            ``"official"`` (``reproduce --profile``; ``predict`` uses ``"paper"``).
    """

    name: str
    title: str
    modes: tuple[str, ...]
    build: Callable[[ClipBackbone, str, str], Method]


def _res2clip(backbone: ClipBackbone, mode: str, profile: str) -> Method:
    from resad_kit.methods import Res2CLIP, Res2CLIPConfig

    config = Res2CLIPConfig.official_code if profile == "official" else Res2CLIPConfig.paper
    return Res2CLIP(backbone, config(mode))


def _nearest_neighbor(backbone: ClipBackbone, mode: str, profile: str) -> Method:
    from resad_kit.methods import NearestNeighbor, NearestNeighborConfig

    return NearestNeighbor(
        backbone, NearestNeighborConfig.patchcore(trainable=mode == "fine_tuned")
    )


METHODS: dict[str, MethodEntry] = {
    "res2clip": MethodEntry(
        "res2clip",
        "Res²CLIP (the paper's method; Res2CLIPConfig.paper / .official_code)",
        ("training_free", "fine_tuned"),
        _res2clip,
    ),
    "nearest_neighbor": MethodEntry(
        "nearest_neighbor",
        "a PatchCore-style nearest-neighbour bank (NearestNeighborConfig.patchcore; "
        "fine-tuned: a learnt projection)",
        ("training_free", "fine_tuned"),
        _nearest_neighbor,
    ),
}


def method_names() -> list[str]:
    """The ``--method`` choices."""
    return list(METHODS)


def build_method(name: str, backbone: ClipBackbone, mode: str, profile: str = "paper") -> Any:
    """A model of method ``name`` in ``mode`` on ``backbone``.

    Raises:
        ValueError: an unknown method, or a mode the method does not have.
    """
    if name not in METHODS:
        raise ValueError(f"--method {name!r} unknown; choose from {method_names()}")
    entry = METHODS[name]
    if mode not in entry.modes:
        raise ValueError(f"--method {name} has no mode {mode!r}; it has {list(entry.modes)}")
    return entry.build(backbone, mode, profile)
