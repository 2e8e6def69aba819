"""How a :class:`~resad_kit.clip.ClipBackbone` is built: pretrained weights or a tiny model.

:class:`BackboneConstructors` holds the two class methods of ``ClipBackbone`` that make
one: :meth:`~BackboneConstructors.from_pretrained` (an open_clip tag or a local checkpoint
file, through :mod:`resad_kit.clip.loading`) and :meth:`~BackboneConstructors.tiny`
(random weights, for tests and offline demos). ``ClipBackbone`` inherits them; use them
as ``ClipBackbone.from_pretrained(...)`` and ``ClipBackbone.tiny(...)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

import torch

from resad_kit.clip import checkpoints
from resad_kit.clip.config import BackboneConfig
from resad_kit.clip.loading import load_clip, merged_config

__all__ = ["BackboneConstructors"]

_B = TypeVar("_B", bound="BackboneConstructors")


class BackboneConstructors:
    """The constructors of :class:`~resad_kit.clip.ClipBackbone` (a mixin it inherits)."""

    @classmethod
    def from_pretrained(
        cls: type[_B],
        model_name: str = "ViT-L-14-336",
        pretrained: str | os.PathLike[str] | None = "openai",
        config: BackboneConfig | None = None,
        *,
        architecture: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        quick_gelu: bool | None = None,
        trust_checkpoint: bool = False,
        cache_dir: str | None = None,
        device: str | torch.device | None = None,
        **overrides: Any,
    ) -> _B:
        """A backbone with pretrained weights: an open_clip tag or a local checkpoint file.

        Args:
            model_name: open_clip architecture (paper: ``"ViT-L-14-336"``), or
                ``"resad-tiny"`` (the :meth:`tiny` architecture).
            pretrained: an open_clip pretrained tag (``"openai"``: open_clip
                downloads it or takes it from its cache), a path to a checkpoint file
                (open_clip state dict as ``.pt``/``.pth``/``.bin``/``.safetensors``, or
                OpenAI's ``.pt`` archive), or ``None`` for random weights (explicit only).
            config: :class:`BackboneConfig`; ``None`` is :meth:`BackboneConfig.paper`.
            architecture: for weights of an architecture open_clip has not registered
                (a fine-tuned or distilled CLIP of another width or depth): an open_clip
                model config (``{"embed_dim", "vision_cfg", "text_cfg"}``, or a Hugging
                Face ``open_clip_config.json`` dictionary), a path to its JSON file, or
                ``"infer"`` to read it from the checkpoint's shapes (heads of width 64
                assumed). ``model_name`` is then only the label.
            quick_gelu: QuickGELU MLPs (the OpenAI weights need them); ``None``
                decides from the tag, the name (``-quickgelu``) or the architecture's tags;
                with ``architecture``, from its ``"quick_gelu"`` entry, True for an OpenAI
                TorchScript archive, and otherwise it must be given.
            trust_checkpoint: read an OpenAI TorchScript archive with ``torch.jit.load``,
                which runs code stored in the file (only for files you trust; the default
                reads the tensors without running anything).
            cache_dir: open_clip's download cache (default: the Hugging Face cache).
            device: where to put the model (default CPU).
            **overrides: fields of :class:`BackboneConfig` that replace those of
                ``config`` (``image_size=518, layers=(6, 12, 18, 24), vv_blocks=20``, …).

        Raises:
            WeightsNotFoundError: the file is missing, or the tag's weights cannot be
                downloaded and are not cached; the message says what was tried and how
                to fix it (download command, local path / ``--checkpoint PATH``).
            ValueError: unknown architecture or tag, a checkpoint that does not fit
                the architecture, or an invalid config.

        Example:
            >>> import torch
            >>> from resad_kit.clip import ClipBackbone
            >>> source = ClipBackbone.tiny(seed=0)
            >>> path = getfixture("tmp_path") / "tiny.pt"
            >>> torch.save(source.model.state_dict(), path)
            >>> loaded = ClipBackbone.from_pretrained(
            ...     "resad-tiny", path, image_size=64, layers=None, vv_blocks=None
            ... )
            >>> images = torch.randn(1, 3, 64, 64)
            >>> torch.equal(loaded(images).cls, source(images).cls)
            True
        """
        config = merged_config(config, overrides)
        loaded = load_clip(
            model_name,
            pretrained,
            architecture=architecture,
            quick_gelu=quick_gelu,
            trust_checkpoint=trust_checkpoint,
            cache_dir=cache_dir,
        )
        backbone = cls(
            loaded.model,
            config,
            model_name=model_name,
            weights=loaded.weights,
            trained=loaded.trained,
            mean=loaded.mean,
            std=loaded.std,
            tokenizer=loaded.tokenizer,
        )
        return backbone.to(device) if device is not None else backbone

    @classmethod
    def tiny(cls: type[_B], seed: int = 0, image_size: int = 64, **overrides: Any) -> _B:
        """A tiny randomly initialised CLIP (same code path) for tests and offline demos.

        Architecture ``"resad-tiny"``: ViT with 8 px patches, native input 32 px
        (a 4×4 positional table, interpolated to the input grid), width 64, 4
        blocks of 2 heads, QuickGELU, ``D = 32``; text tower of width 64 and 2
        blocks with CLIP's real vocabulary and context length. Defaults: taps at
        the quarters of the depth (blocks 1–4) and V-V on the last 3 blocks
        (20/24 of 4, rounded), so the first tap is a standard block. The weights
        are random: every output is untrained, and ``weights`` says so.

        Args:
            seed: seed of the random weights (the global RNG is left untouched).
            image_size: input side (a multiple of 8).
            **overrides: other fields of :class:`BackboneConfig` (default
                ``layers=None, vv_blocks=None``: scaled to the depth).

        Example:
            >>> import torch
            >>> from resad_kit.clip import ClipBackbone
            >>> a, b = ClipBackbone.tiny(seed=1), ClipBackbone.tiny(seed=1)
            >>> x = torch.randn(1, 3, 64, 64)
            >>> torch.equal(a(x).cls, b(x).cls), a.trained, a.vv_block_indices
            (True, False, (2, 3, 4))
        """
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"ClipBackbone.tiny: `seed` must be an int ≥ 0; got {seed!r}")
        fields = {"layers": None, "vv_blocks": None, **overrides, "image_size": image_size}
        config = BackboneConfig(**fields)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = checkpoints.build_model(checkpoints.TINY_MODEL_NAME, quick_gelu=True)
        return cls(
            model,
            config,
            model_name=checkpoints.TINY_MODEL_NAME,
            weights=f"untrained: random init (seed {seed})",
            trained=False,
        )
