"""Residual adapters of Res²CLIP (Appendix E, Eqs. 42–43).

Every adapter maps a raw residual ``R`` to an adapted residual ``R̃ = A(R)``
and is the identity at initialisation, because its last projection is
zero-initialised. In the training-free mode (Res²CLIP*) the adapters are simply
not applied; in the fine-tuned mode (Res²CLIP†) they are trained.

Shape legend: ``B`` batch, ``N`` patches (tokens) of an ``h×w`` patch grid in
row-major order (token ``y·w + x`` is the patch in row ``y``, column ``x``),
``D`` channels, ``r`` bottleneck channels (``D // 4`` by default).

Submodule names follow the official code (``hito2448/Res2CLIP``,
``models/adapter.py``) wherever the structure is the same, so that its
checkpoints load after
:meth:`Res2CLIPAdapters.convert_official_state_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from resad_kit.ops._validation import (
    check_positive_int,
    check_tensor,
    patch_grid,
)

__all__ = ["GlobalAdapter", "LocalConvAdapter", "Res2CLIPAdapters", "ResidualAdapter"]

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def _resolve_bottleneck(fn: str, dim: int, bottleneck: int | None) -> int:
    check_positive_int(fn, "dim", dim)
    if bottleneck is None:
        if dim // 4 == 0:
            raise ValueError(
                f"{fn}: the default `bottleneck` dim // 4 is 0 for dim={dim}; pass `bottleneck`"
            )
        return dim // 4
    return check_positive_int(fn, "bottleneck", bottleneck)


def _check_residual(fn: str, residual: object, dim: int, *, min_ndim: int, doc: str) -> Tensor:
    x = check_tensor(fn, "residual", residual, min_ndim=min_ndim, shape_doc=doc, finite=True)
    if x.shape[-1] != dim:
        raise ValueError(
            f"{fn}: `residual` must have shape {doc.replace('D', str(dim))}; "
            f"got shape {tuple(x.shape)}"
        )
    return x


class ResidualAdapter(nn.Module):
    r"""Bottleneck MLP adapter with a zero-initialised up-projection.

    .. math::

        A(R) = R + W_{up}\,\mathrm{act}(W_{down}\,\mathrm{LN}(R))

    ``W_down`` (``fc1``, ``D → r``) keeps PyTorch's default ``nn.Linear`` init;
    ``W_up`` (``fc2``, ``r → D``) is zero, so the adapter is exactly the identity
    at initialisation. This is the generic adapter; :class:`GlobalAdapter` is the
    paper's preset (Eq. 42), and with the defaults it is also the "Linear (MLP
    bottleneck)" local variant of Table 12 (applied token-wise).

    Args:
        dim: channels ``D`` of the residual.
        bottleneck: hidden channels ``r``; ``dim // 4`` when ``None``.
        activation: ``"gelu"`` (exact, erf-based ``nn.GELU``) or ``"relu"``.
        norm: apply ``LayerNorm(D)`` (affine, eps ``1e-5``) first; ``False`` drops it.
        bias: give both linear layers a bias (the up-projection bias is also
            zero-initialised). The paper's code uses no bias.

    Shape:
        - residual: ``(..., D)``
        - output: ``(..., D)``, same shape and dtype.

    Raises:
        ValueError: for a non-positive ``dim``/``bottleneck`` or an unknown
            ``activation``; in ``forward``, when the last dimension of
            ``residual`` is not ``D`` or it holds NaN/inf.

    Example:
        >>> import torch
        >>> from resad_kit.nn import ResidualAdapter
        >>> adapter = ResidualAdapter(16, activation="relu")
        >>> r = torch.randn(2, 5, 16)
        >>> torch.equal(adapter(r), r)  # identity at initialisation
        True
        >>> sum(p.numel() for p in adapter.parameters())  # LN 32 + 2 · 16·4
        160
    """

    def __init__(
        self,
        dim: int = 768,
        bottleneck: int | None = None,
        *,
        activation: Literal["gelu", "relu"] = "gelu",
        norm: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        fn = type(self).__name__
        hidden = _resolve_bottleneck(fn, dim, bottleneck)
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"{fn}: `activation` must be one of {sorted(_ACTIVATIONS)}; got {activation!r}"
            )
        self.dim = dim
        self.bottleneck = hidden
        self.norm: nn.Module = nn.LayerNorm(dim) if norm else nn.Identity()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = _ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        nn.init.zeros_(self.fc2.weight)
        if self.fc2.bias is not None:
            nn.init.zeros_(self.fc2.bias)

    def forward(self, residual: Tensor) -> Tensor:
        """Return the adapted residual ``A(residual)``; see the class docstring."""
        residual = _check_residual(
            type(self).__name__, residual, self.dim, min_ndim=1, doc="(..., D)"
        )
        return residual + self.fc2(self.act(self.fc1(self.norm(residual))))


class GlobalAdapter(ResidualAdapter):
    r"""The paper's global adapter (Eq. 42), for ``A_t``, ``A_t^res`` and ``A^res_{v,cls}``.

    .. math::

        A(R) = R + W_2\,\mathrm{GELU}(W_1\,\mathrm{LN}(R))

    A preset of :class:`ResidualAdapter`: affine ``LayerNorm(D, eps=1e-5)``,
    ``W_1: D → D/4`` and ``W_2: D/4 → D`` without bias (official code), exact GELU,
    ``W_2`` zero-initialised. ``D = 768`` gives 296,448 parameters.

    Args:
        dim: channels ``D`` of the residual.
        bottleneck: hidden channels; ``dim // 4`` (192 for ``D = 768``) when ``None``.

    Shape:
        - residual: ``(..., D)``, e.g. a text residual ``(D,)`` or ``(B, D)``
        - output: ``(..., D)``

    Example:
        >>> import torch
        >>> from resad_kit.nn import GlobalAdapter
        >>> adapter = GlobalAdapter()
        >>> sum(p.numel() for p in adapter.parameters())
        296448
        >>> r_t = torch.randn(768)
        >>> torch.equal(adapter(r_t), r_t)
        True
    """

    def __init__(self, dim: int = 768, bottleneck: int | None = None) -> None:
        super().__init__(dim, bottleneck, activation="gelu", norm=True, bias=False)


class LocalConvAdapter(nn.Module):
    r"""Multi-scale depthwise-convolution adapter for local residuals (Eq. 43, App. E.2).

    Used for ``A_{v,l}`` and ``A^res_{v,l}``. With ``Z`` the bottleneck tokens
    reshaped (row-major) to an ``r × h × w`` map:

    .. math::

        z_0 &= \mathrm{ReLU}(W_{down}\,\mathrm{LN}_1(R)) \\
        U &= [\,Z,\; \mathrm{DW}_{d_1}(Z),\; \mathrm{DW}_{d_2}(Z)\,]
              \ \text{(channels, flattened back to tokens)} \\
        A(R) &= R + W_{up}\,\mathrm{ReLU}(W_{blend}\,\mathrm{LN}_2(U))

    ``DW_d`` is a depthwise (``groups = r``) ``k×k`` convolution with dilation
    ``d``, zero padding ``d·(k−1)/2`` (the grid size is kept) and no bias,
    initialised with ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``.
    ``W_down`` (``D → r``), ``W_blend`` (``(1+#dilations)·r → r``) keep PyTorch's
    default ``nn.Linear`` init and ``W_up`` (``r → D``) is zero, so the adapter is
    the identity at initialisation. No layer has a bias; both LayerNorms are
    affine (eps ``1e-5``). ``D = 768`` gives 411,648 parameters.

    Submodules (official names): ``norm`` (LN₁), ``down``, ``convs`` (one per
    dilation; the official ``conv_fine``/``conv_coarse`` are ``convs[0]``/``convs[1]``),
    ``internal_norm`` (LN₂), ``blend``, ``up``.

    Args:
        dim: channels ``D``.
        bottleneck: bottleneck channels ``r``; ``dim // 4`` when ``None``.
        dilations: one parallel depthwise convolution per dilation (paper: 1 and 2).
        kernel_size: odd kernel side ``k`` (paper: 3).

    Shape:
        - residual: ``(..., N, D)`` (e.g. ``(B, N, D)``); leading dims are
          flattened into one batch dim, and ``(N, D)`` is one image.
        - grid: ``(h, w)`` with ``h·w = N``; ``None`` means a square grid.
        - output: ``(..., N, D)``

    Raises:
        ValueError: for invalid constructor arguments; in ``forward``, when the
            last dimension of ``residual`` is not ``D``, it holds NaN/inf, or the
            grid does not match ``N``.

    Example:
        >>> import torch
        >>> from resad_kit.nn import LocalConvAdapter
        >>> adapter = LocalConvAdapter()
        >>> sum(p.numel() for p in adapter.parameters())
        411648
        >>> r_v = torch.randn(2, 6 * 4, 768)  # a 6×4 patch grid
        >>> torch.equal(adapter(r_v, grid=(6, 4)), r_v)
        True
    """

    def __init__(
        self,
        dim: int = 768,
        bottleneck: int | None = None,
        *,
        dilations: Sequence[int] = (1, 2),
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        fn = type(self).__name__
        hidden = _resolve_bottleneck(fn, dim, bottleneck)
        check_positive_int(fn, "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"{fn}: `kernel_size` must be odd; got {kernel_size}")
        dilations = tuple(dilations)
        if not dilations:
            raise ValueError(f"{fn}: `dilations` must not be empty")
        for d in dilations:
            check_positive_int(fn, "dilations", d)
        self.dim = dim
        self.bottleneck = hidden
        self.dilations = dilations
        self.kernel_size = kernel_size

        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden, bias=False)
        self.convs = nn.ModuleList(
            nn.Conv2d(
                hidden,
                hidden,
                kernel_size,
                padding=d * (kernel_size - 1) // 2,
                dilation=d,
                groups=hidden,
                bias=False,
            )
            for d in dilations
        )
        width = hidden * (1 + len(dilations))
        self.internal_norm = nn.LayerNorm(width)
        self.blend = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(hidden, dim, bias=False)
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.up.weight)

    def forward(self, residual: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Return the adapted residual map; see the class docstring."""
        fn = type(self).__name__
        residual = _check_residual(fn, residual, self.dim, min_ndim=2, doc="(..., N, D)")
        n = residual.shape[-2]
        h, w = patch_grid(fn, "residual", n, grid)

        x = residual.reshape(-1, n, self.dim)
        z = rearrange(F.relu(self.down(self.norm(x))), "b (h w) c -> b c h w", h=h, w=w)
        u = torch.cat([z, *(conv(z) for conv in self.convs)], dim=1)
        u = rearrange(u, "b c h w -> b (h w) c")
        delta = self.up(F.relu(self.blend(self.internal_norm(u))))
        return residual + delta.reshape(residual.shape)


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
        """Optimiser parameter groups with the paper's learning rates (spec §4.5).

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
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"{type(self).__name__}.parameter_groups: `{arg}` must be a finite "
                    f"number >= 0; got {value!r}"
                )
        return [
            {"name": name, "params": list(getattr(self, name).parameters()), "lr": float(lr)}
            for name, lr in lrs.items()
        ]

    def phase_modules(self, update: Literal["visual", "text"]) -> dict[str, nn.Module]:
        """The adapters trained in one phase of the alternating schedule (spec §4.4).

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
        if update not in phases:
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
