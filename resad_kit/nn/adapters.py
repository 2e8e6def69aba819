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
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from resad_kit.ops._validation import (
    check_positive_int,
    check_tensor,
    checks_enabled,
    patch_grid,
)

__all__ = ["GlobalAdapter", "LocalConvAdapter", "ResidualAdapter"]

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
        if checks_enabled():
            _check_residual(type(self).__name__, residual, self.dim, min_ndim=1, doc="(..., D)")
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
        if checks_enabled():
            fn = type(self).__name__
            _check_residual(fn, residual, self.dim, min_ndim=2, doc="(..., N, D)")
            h, w = patch_grid(fn, "residual", residual.shape[-2], grid)
        else:
            h, w = grid if grid is not None else (math.isqrt(residual.shape[-2]),) * 2
        n = residual.shape[-2]

        x = residual.reshape(-1, n, self.dim)
        z = rearrange(F.relu(self.down(self.norm(x))), "b (h w) c -> b c h w", h=h, w=w)
        u = torch.cat([z, *(conv(z) for conv in self.convs)], dim=1)
        u = rearrange(u, "b c h w -> b (h w) c")
        delta = self.up(F.relu(self.blend(self.internal_norm(u))))
        return residual + delta.reshape(residual.shape)
