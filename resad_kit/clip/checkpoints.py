"""Weights of the CLIP backbone: open_clip tags, local checkpoint files, the tiny test model.

One path for every source: the *architecture* is built from open_clip's model
config (or the tiny config below) with random weights, then the *weights* are
read from one file: a local checkpoint, or the file that open_clip downloads (or
finds in its cache) for a pretrained tag. When no file can be had, a
:class:`WeightsNotFoundError` says what was tried and how to fix it; random
weights are used only when asked for (``pretrained=None``).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import open_clip
import safetensors.torch
import torch
from open_clip.pretrained import download_pretrained, get_pretrained_cfg

from resad_kit.clip.torchscript import is_torchscript_archive, read_torchscript_state_dict

__all__ = ["TINY_MODEL_NAME", "WeightsNotFoundError"]

logger = logging.getLogger(__name__)

#: Name of the tiny randomly initialised architecture used by tests and offline demos.
TINY_MODEL_NAME = "resad-tiny"

# A scaled-down OpenAI-style ViT CLIP: 32 px native input, 8 px patches (4×4 grid),
# width 64, 4 blocks of 2 heads; text tower with the real vocabulary and context
# length, so the real BPE tokenizer works. About 3.4 M parameters (mostly the
# token embedding).
_TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class WeightsNotFoundError(FileNotFoundError):
    """The backbone's weights could not be obtained (missing file; no network and no cache).

    The message says what was tried and how to fix it. Being a
    ``FileNotFoundError``, it is caught by ``except OSError`` too.

    Example:
        >>> from resad_kit.clip import ClipBackbone, WeightsNotFoundError
        >>> try:
        ...     ClipBackbone.from_pretrained("resad-tiny", "/no/such/file.pt")
        ... except WeightsNotFoundError as err:
        ...     print(str(err).splitlines()[0])
        ClipBackbone.from_pretrained: checkpoint file not found: /no/such/file.pt
    """


def _looks_like_path(pretrained: str | os.PathLike[str]) -> bool:
    if isinstance(pretrained, os.PathLike):
        return True
    return (
        os.sep in pretrained
        or "/" in pretrained
        or pretrained.lower().endswith(_CHECKPOINT_SUFFIXES)
        or os.path.exists(pretrained)
    )


def _known_tags(model_name: str) -> list[str]:
    return list(open_clip.list_pretrained_tags_by_model(model_name))


def model_config(model_name: str) -> dict[str, Any]:
    """The architecture config of ``model_name`` (open_clip built-in, or the tiny model)."""
    fn = "ClipBackbone.from_pretrained"
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"{fn}: `model_name` must be a non-empty str; got {model_name!r}")
    if model_name == TINY_MODEL_NAME:
        return {**_TINY_CONFIG, "vision_cfg": dict(_TINY_CONFIG["vision_cfg"])}
    if ":" in model_name:
        raise ValueError(
            f"{fn}: `model_name` must be an open_clip built-in architecture name such as "
            f"'ViT-L-14-336' (schemas like 'hf-hub:' are not supported); got {model_name!r}. "
            "Pass the weights file as `pretrained` instead."
        )
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(
            f"{fn}: unknown architecture {model_name!r}; open_clip.list_models() lists the "
            f"built-in names (e.g. 'ViT-L-14-336'), and {TINY_MODEL_NAME!r} is the tiny test model"
        )
    vision = cfg.get("vision_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)) or vision.get("timm_model_name"):
        raise ValueError(
            f"{fn}: {model_name!r} has no plain ViT image tower (ResNet or timm); "
            "ClipBackbone needs an OpenAI-style VisionTransformer"
        )
    return cfg


def _tag_config(model_name: str, pretrained: object) -> dict[str, Any]:
    """open_clip's pretrained entry if ``pretrained`` is a tag of ``model_name``, else ``{}``."""
    if not isinstance(pretrained, str):
        return {}
    return dict(get_pretrained_cfg(model_name, pretrained))


def resolve_quick_gelu(
    model_name: str, pretrained: str | os.PathLike[str] | None, quick_gelu: bool | None
) -> bool:
    """Whether the MLPs use QuickGELU (``x·σ(1.702x)``), which the OpenAI weights need.

    ``quick_gelu`` wins when given. Otherwise: a pretrained tag says it itself
    (``openai`` → True); for a local file or random weights, True when the config
    says so (a ``-quickgelu`` name) or when every pretrained tag open_clip knows
    for ``model_name`` uses QuickGELU (so ``ViT-L-14-336``, whose only tag is
    ``openai``, gets it); a local file of an architecture whose tags disagree
    (``ViT-B-32``: ``openai`` and LAION tags) gets GELU with a warning.
    """
    if quick_gelu is not None:
        return bool(quick_gelu)
    cfg_value = bool(model_config(model_name).get("quick_gelu", False))
    tag_cfg = _tag_config(model_name, pretrained)
    if tag_cfg:
        return bool(tag_cfg.get("quick_gelu", False)) or cfg_value
    if cfg_value or model_name == TINY_MODEL_NAME:
        return cfg_value
    flags = {
        bool(get_pretrained_cfg(model_name, t).get("quick_gelu")) for t in _known_tags(model_name)
    }
    if flags == {True}:
        return True
    if flags == {True, False} and pretrained is not None:
        warnings.warn(
            f"ClipBackbone.from_pretrained: {model_name!r} has tags trained with QuickGELU "
            "and tags trained with GELU; loading the local file with GELU. Pass "
            "quick_gelu=True if the file holds OpenAI weights.",
            UserWarning,
            stacklevel=3,
        )
    return False


def resolve_weights(
    model_name: str, pretrained: str | os.PathLike[str], cache_dir: str | None
) -> tuple[Path, dict[str, Any]]:
    """The weights file for ``pretrained`` (a tag of ``model_name`` or a path) and the tag entry.

    A tag is downloaded (or found in the cache) by open_clip; anything else must be
    an existing file. Errors: :class:`WeightsNotFoundError` when the file is
    missing or cannot be downloaded, ``ValueError`` for a string that is neither a
    tag nor a path.
    """
    fn = "ClipBackbone.from_pretrained"
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(
            f"{fn}: `pretrained` must be a pretrained tag, a file path or None; "
            f"got {type(pretrained).__name__}"
        )
    tag_cfg = _tag_config(model_name, pretrained)
    if tag_cfg:
        return Path(download_weights(model_name, str(pretrained), cache_dir)), tag_cfg
    path = Path(pretrained).expanduser()
    if path.is_file() or _looks_like_path(pretrained):
        return check_local_file(path, model_name), {}
    tags = _known_tags(model_name)
    raise ValueError(
        f"{fn}: {os.fspath(pretrained)!r} is neither a pretrained tag of {model_name!r} "
        f"(known tags: {tags or 'none'}) nor an existing checkpoint file"
    )


def build_model(model_name: str, quick_gelu: bool) -> open_clip.CLIP:
    """The architecture ``model_name`` in float32 on the CPU, with random weights."""
    cfg = model_config(model_name)
    if model_name == TINY_MODEL_NAME:
        cfg["quick_gelu"] = quick_gelu
        model = open_clip.CLIP(**cfg)
    else:
        model = open_clip.create_model(
            model_name, pretrained=None, precision="fp32", device="cpu", quick_gelu=quick_gelu
        )
    if not isinstance(model, open_clip.CLIP):
        raise ValueError(
            f"ClipBackbone.from_pretrained: {model_name!r} builds a {type(model).__name__}, "
            "not an open_clip.CLIP with a plain text tower; it is not supported"
        )
    return model


def _tried_sources(model_name: str, tag: str, cfg: dict[str, Any], cache_dir: str | None) -> str:
    lines = []
    hf_hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hf_hub and open_clip.pretrained.has_hf_hub():
        from huggingface_hub import constants

        repo = hf_hub.rpartition("/")[0]
        cache = cache_dir or constants.HF_HUB_CACHE
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        lines.append(f"  - Hugging Face Hub repo {repo!r}, cache {cache}{offline}")
    elif url:
        cache = cache_dir or os.path.expanduser("~/.cache/clip")
        lines.append(f"  - URL {url}, cache {cache}")
    return "\n".join(lines) or f"  - open_clip's pretrained entry for ({model_name!r}, {tag!r})"


def _fix_hint(model_name: str, cfg: dict[str, Any], cache_dir: str | None) -> str:
    hints = []
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        repo = hf_hub.rpartition("/")[0]  # open_clip's form: "org/repo/" or "org/repo/file"
        where = f" --cache-dir {cache_dir}" if cache_dir else ""
        hints.append(
            "  - on a machine with network access, fill the cache once: "
            f"hf download {repo}{where}\n"
            "    (or run this same call there, and copy the cache folder over)"
        )
    url = cfg.get("url", "")
    if url:
        hints.append(f"  - or download the file yourself: curl -L -O {url}")
    hints.append(
        f"  - then pass the file: ClipBackbone.from_pretrained({model_name!r}, '/path/to/file') "
        "or, in the example scripts, --checkpoint /path/to/file"
    )
    return "\n".join(hints)


def download_weights(model_name: str, tag: str, cache_dir: str | None) -> str:
    """Path of the weights file of (``model_name``, ``tag``), from open_clip's cache or download."""
    fn = "ClipBackbone.from_pretrained"
    cfg = get_pretrained_cfg(model_name, tag)
    try:
        path = download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as err:
        raise WeightsNotFoundError(
            f"{fn}: could not obtain the {tag!r} weights of {model_name!r} "
            "(no network access and no cached copy?).\n"
            f"Tried open_clip's download:\n{_tried_sources(model_name, tag, cfg, cache_dir)}\n"
            f"Error: {type(err).__name__}: {err}\n"
            f"To fix:\n{_fix_hint(model_name, cfg, cache_dir)}\n"
            "Random weights are never used in place of missing weights."
        ) from err
    if not path or not os.path.isfile(path):
        raise WeightsNotFoundError(
            f"{fn}: open_clip returned no weights file for ({model_name!r}, {tag!r}).\n"
            f"To fix:\n{_fix_hint(model_name, cfg, cache_dir)}"
        )
    return str(path)


_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def read_state_dict(
    path: str | os.PathLike[str], *, trust_code: bool = False
) -> dict[str, torch.Tensor]:
    """The CLIP state dict in a checkpoint file, read without running code from the file.

    - ``.safetensors`` files are read with safetensors;
    - OpenAI's TorchScript ``.pt`` archives are read by
      :func:`~resad_kit.clip.torchscript.read_torchscript_state_dict`, which takes the
      tensors out of the zip and never runs the archive's code (``torch.jit.load``
      would: a TorchScript ``__setstate__`` runs while loading). Their extra
      buffers ``input_resolution``, ``context_length``, ``vocab_size`` are dropped;
    - anything else with ``torch.load(weights_only=True)``, which refuses pickles
      of anything but tensors and plain containers; a ``{"state_dict": ...}``
      wrapper and a DDP ``module.`` prefix are removed.

    Args:
        path: the checkpoint file.
        trust_code: read TorchScript archives with ``torch.jit.load`` instead, which
            runs code stored in the file: only for files from a source you trust,
            and only needed for archives whose modules restore their state with
            their own ``__setstate__``. Other formats never run code.

    Returns:
        The state dict (CPU tensors).

    Raises:
        ValueError: the file holds no non-empty state dict, or a TorchScript archive
            holds anything but weights (refused before anything runs).
    """
    path = Path(path)
    if is_torchscript_archive(path):
        if trust_code:
            with warnings.catch_warnings():  # TorchScript is deprecated, OpenAI's files are not
                warnings.simplefilter("ignore", FutureWarning)
                state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        else:
            state = read_torchscript_state_dict(path)
        return {k: v for k, v in state.items() if k not in _OPENAI_EXTRAS}
    if path.suffix == ".safetensors":
        state = safetensors.torch.load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"holds {type(state).__name__}, not a non-empty state dict")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_weights(
    model: open_clip.CLIP,
    path: str | os.PathLike[str],
    model_name: str,
    *,
    trust_code: bool = False,
) -> None:
    """Copy the weights in ``path`` into ``model`` (strict: every key must match).

    ``trust_code`` as in :func:`read_state_dict` (default: no code from the file runs).
    """
    fn = "ClipBackbone.from_pretrained"
    try:
        state = read_state_dict(path, trust_code=trust_code)
    except Exception as err:
        raise ValueError(
            f"{fn}: could not read the checkpoint {os.fspath(path)!r} "
            f"({type(err).__name__}: {err}); expected an open_clip state dict "
            "(.pt/.pth/.bin via torch.save, or .safetensors) or an OpenAI CLIP .pt archive"
        ) from err
    # Non-persistent buffers (the text attention mask) are not weights; traced archives keep them.
    transient = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    state = {k: v for k, v in state.items() if k not in transient}
    if "logit_scale" in state and state["logit_scale"].shape != model.logit_scale.shape:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    expected = model.state_dict()
    problems = []
    for label, keys in (
        ("missing", sorted(set(expected) - set(state))),
        ("unexpected", sorted(set(state) - set(expected))),
        (
            "wrong shape",
            sorted(
                k
                for k in set(state) & set(expected)
                if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape
            ),
        ),
    ):
        if keys:
            shown = ", ".join(repr(k) for k in keys[:4]) + (", …" if len(keys) > 4 else "")
            problems.append(f"{len(keys)} {label} key(s) ({shown})")
    if problems:
        raise ValueError(
            f"{fn}: the checkpoint {os.fspath(path)!r} does not fit the architecture "
            f"{model_name!r}: {'; '.join(problems)}. Pass the `model_name` the weights were "
            "trained with."
        )
    model.load_state_dict(state, strict=True)
    logger.info("loaded CLIP weights of %s from %s", model_name, os.fspath(path))


def check_local_file(path: str | os.PathLike[str], model_name: str) -> Path:
    """``path`` as a ``Path`` if it is a file; else a :class:`WeightsNotFoundError`."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    tags = _known_tags(model_name)
    what = "is a directory, not a file" if p.is_dir() else "not found"
    tag_hint = f" or one of its pretrained tags {tags}" if tags else ""
    raise WeightsNotFoundError(
        f"ClipBackbone.from_pretrained: checkpoint file {what}: {os.fspath(path)}\n"
        f"Pass an existing checkpoint file of {model_name!r} (open_clip state dict as "
        f".pt/.pth/.bin/.safetensors, or OpenAI's .pt archive){tag_hint}; in the example "
        "scripts: --checkpoint /path/to/file. Random weights are never used in place of "
        "missing weights."
    )
