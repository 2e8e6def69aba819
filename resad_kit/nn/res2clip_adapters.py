"""The full adapter set of Res²CLIP† (paper App. E): a container of the residual adapters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from resad_kit.nn.adapters import GlobalAdapter, LocalConvAdapter
from resad_kit.ops._phases import PHASES, Phase
from resad_kit.ops._validation import check_number, check_positive_int

__all__ = ["Res2CLIPAdapters"]


class Res2CLIPAdapters(nn.Module):
    """The full adapter set of Res²CLIP† (App. E; 4,182,528 parameters for ``D=768, L=4``).

    A container (no ``forward``) of independent adapters, none shared:

    - ``text``: ``A_t``, a :class:`GlobalAdapter` (text branch);
    - ``residual_text``: ``A_t^res``, a :class:`GlobalAdapter` (residual branch);
    - ``residual_global``: ``A^res_{v,cls}``, a :class:`GlobalAdapter` (residual branch);
    - ``visual[i]``: ``A_{v,l}``, a :class:`LocalConvAdapter` (visual branch);
    - ``residual_local[i]``: ``A^res_{v,l}``, a :class:`LocalConvAdapter` (residual branch).

    ``i`` indexes the tapped layers in order (``l ∈ {6, 12, 18, 24}`` → ``i = 0..3``).

    Args:
        dim: channels ``D``.
        num_layers: number of tapped layers ``L`` (one local adapter per layer and branch).
        bottleneck: bottleneck channels of every adapter; ``dim // 4`` when ``None``.

    Example:
        >>> from resad_kit.nn import Res2CLIPAdapters
        >>> adapters = Res2CLIPAdapters()
        >>> sum(p.numel() for p in adapters.parameters())
        4182528
        >>> [g["name"] for g in adapters.parameter_groups()]
        ['visual', 'residual_local', 'residual_global', 'text', 'residual_text']
        >>> list(adapters.phase_modules("text"))
        ['text', 'visual', 'residual_text']
    """

    def __init__(self, dim: int = 768, num_layers: int = 4, bottleneck: int | None = None) -> None:
        super().__init__()
        check_positive_int(type(self).__name__, "num_layers", num_layers)
        self.text = GlobalAdapter(dim, bottleneck)
        self.residual_text = GlobalAdapter(dim, bottleneck)
        self.residual_global = GlobalAdapter(dim, bottleneck)
        self.visual = nn.ModuleList(LocalConvAdapter(dim, bottleneck) for _ in range(num_layers))
        self.residual_local = nn.ModuleList(
            LocalConvAdapter(dim, bottleneck) for _ in range(num_layers)
        )

    def parameter_groups(
        self,
        *,
        lr_local: float = 5e-4,
        lr_text: float = 1e-4,
        lr_global_visual: float = 1e-4,
    ) -> list[dict[str, Any]]:
        """Optimiser parameter groups with the paper's learning rates (App. F.2).

        One group per adapter family, each with a ``"name"`` equal to the
        attribute name: ``visual`` and ``residual_local`` at ``lr_local``,
        ``residual_global`` at ``lr_global_visual``, ``text`` and
        ``residual_text`` at ``lr_text``. The groups are disjoint and cover every
        parameter; pass them to one optimiser, or filter by ``"name"`` to build the
        official code's four optimisers (``visual``; ``residual_local`` +
        ``residual_global``; ``residual_text``; ``text``).

        Args:
            lr_local: local visual and local residual adapters (paper and code: 5e-4).
            lr_text: ``A_t`` and ``A_t^res`` (paper and code: 1e-4).
            lr_global_visual: ``A^res_{v,cls}``; paper 1e-4, official code 5e-4.

        Returns:
            A list of ``{"name": str, "params": list[Parameter], "lr": float}``.

        Example:
            >>> import torch
            >>> from resad_kit.nn import Res2CLIPAdapters
            >>> adapters = Res2CLIPAdapters(dim=32, num_layers=2)
            >>> groups = adapters.parameter_groups(lr_global_visual=5e-4)  # official code
            >>> {g["name"]: g["lr"] for g in groups}["residual_global"]
            0.0005
            >>> optimizer = torch.optim.Adam(groups, betas=(0.5, 0.999))
        """
        lrs = {
            "visual": lr_local,
            "residual_local": lr_local,
            "residual_global": lr_global_visual,
            "text": lr_text,
            "residual_text": lr_text,
        }
        for arg, value in (
            ("lr_local", lr_local),
            ("lr_text", lr_text),
            ("lr_global_visual", lr_global_visual),
        ):
            check_number(
                f"{type(self).__name__}.parameter_groups",
                arg,
                value,
                minimum=0.0,
                what="a finite number >= 0",
                non_number=ValueError,
                requirement="a finite number >= 0",
            )
        return [
            {"name": name, "params": list(getattr(self, name).parameters()), "lr": float(lr)}
            for name, lr in lrs.items()
        ]

    def phase_modules(self, update: Phase) -> dict[str, nn.Module]:
        """The adapters trained in one phase of the alternating schedule (App. F.2, eq. 15).

        ``text`` (``A_t``) and ``visual`` (``A_{v,l}``) are trained in every epoch.
        ``update="visual"`` (even 0-based epochs, the first included) adds
        ``residual_local`` and ``residual_global``; ``update="text"`` (odd epochs)
        adds ``residual_text``. The remaining residual adapters are frozen in that
        phase: their outputs are computed under ``torch.no_grad()``.

        Args:
            update: ``"visual"`` or ``"text"``.

        Returns:
            ``{attribute name: module}`` of the trained adapters, in a fixed order.

        Example:
            >>> from resad_kit.nn import Res2CLIPAdapters
            >>> adapters = Res2CLIPAdapters(dim=32, num_layers=2)
            >>> list(adapters.phase_modules("visual"))
            ['text', 'visual', 'residual_local', 'residual_global']
        """
        phases = {"visual": ("residual_local", "residual_global"), "text": ("residual_text",)}
        if update not in PHASES:
            raise ValueError(
                f"{type(self).__name__}.phase_modules: `update` must be 'visual' or 'text'; "
                f"got {update!r}"
            )
        return {name: getattr(self, name) for name in ("text", "visual", *phases[update])}

    @staticmethod
    def convert_official_state_dict(
        checkpoint: Mapping[str, Mapping[str, Tensor]],
        layers: Sequence[int] = (6, 12, 18, 24),
    ) -> dict[str, Tensor]:
        """Convert an official Res²CLIP checkpoint into this module's ``state_dict``.

        The official training script saves a dict with the keys ``text_adapter``,
        ``res_text_adapter``, ``res_vis_global_adapter`` (``ResidualAdapter``
        state dicts, same names as :class:`GlobalAdapter`) and ``vis_adapters``,
        ``res_vis_local_adapters`` (``ModuleDict`` keyed by the layer number; in
        each ``MultiScaleConvAdapter`` ``conv_fine``/``conv_coarse`` become
        ``convs.0``/``convs.1``). Reading the file is left to the caller.

        Args:
            checkpoint: the loaded official checkpoint dict.
            layers: tapped layers in the order of ``visual``/``residual_local``.

        Returns:
            A state dict for ``Res2CLIPAdapters(num_layers=len(layers))``; load it
            with ``load_state_dict`` (strict).

        Example:
            >>> from resad_kit.nn import Res2CLIPAdapters
            >>> ckpt = {
            ...     "text_adapter": {},
            ...     "res_text_adapter": {},
            ...     "res_vis_global_adapter": {},
            ...     "vis_adapters": {},
            ...     "res_vis_local_adapters": {},
            ... }
            >>> Res2CLIPAdapters.convert_official_state_dict(ckpt)
            {}
        """
        out: dict[str, Tensor] = {}
        for src, dst in (
            ("text_adapter", "text"),
            ("res_text_adapter", "residual_text"),
            ("res_vis_global_adapter", "residual_global"),
        ):
            for key, value in checkpoint[src].items():
                out[f"{dst}.{key}"] = value
        index = {str(layer): i for i, layer in enumerate(layers)}
        renames = {"conv_fine.": "convs.0.", "conv_coarse.": "convs.1."}
        for src, dst in (("vis_adapters", "visual"), ("res_vis_local_adapters", "residual_local")):
            for key, value in checkpoint[src].items():
                layer, _, rest = key.partition(".")
                if layer not in index:
                    raise ValueError(
                        "Res2CLIPAdapters.convert_official_state_dict: "
                        f"`checkpoint[{src!r}]` has layer {layer!r}, "
                        f"not in `layers`={tuple(layers)}"
                    )
                for old, new in renames.items():
                    if rest.startswith(old):
                        rest = new + rest[len(old) :]
                out[f"{dst}.{index[layer]}.{rest}"] = value
        return out
