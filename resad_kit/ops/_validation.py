"""Input checks shared by the primitives, and the switch that turns them off (private).

Every public primitive validates its inputs with these helpers so that error
messages look the same everywhere: they name the function, the argument, what
was expected and what was received. Each public primitive is a checked façade over an
unchecked core: ``if checks_enabled(): <validate>`` and then the core does the maths.

The switch (exported as :func:`resad_kit.checks`): checks are on unless the environment
variable ``RESAD_KIT_CHECKS`` is ``0``, ``false``, ``off`` or ``no`` when resad_kit is
imported; ``checks(False)`` turns them off for the calling thread (a context manager that
restores the previous state on exit, also on an exception). Checks that read tensor values
(finite, binary, ≥ 0: a device-to-host sync) are also skipped while ``torch.compile``
traces (:func:`torch.compiler.is_compiling`).
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from collections import Counter
from collections.abc import Sequence
from types import TracebackType

import torch

__all__: list[str] = []

ENV_VAR = "RESAD_KIT_CHECKS"
"""Environment variable read once at import: ``0``/``false``/``off``/``no`` turn checks off."""

_OFF_VALUES = frozenset({"0", "false", "off", "no"})


def _env_default() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF_VALUES


_DEFAULT = _env_default()
_STATE = threading.local()


def checks_enabled() -> bool:
    """Whether the public primitives validate their inputs (in the calling thread)."""
    return getattr(_STATE, "enabled", _DEFAULT)


VALUE_CHECKS_RUN: Counter[str] = Counter()
"""How many checks that read tensor values ran, by public function (``fn``); for tests."""


def value_check(fn: str) -> bool:
    """Gate of every check that reads tensor values (a device-to-host sync), called by ``fn``.

    True (and counted in :data:`VALUE_CHECKS_RUN`) when checks are on and ``torch.compile`` is
    not tracing; False otherwise, and the check must then return without touching values.
    """
    if not checks_enabled() or torch.compiler.is_compiling():
        return False
    VALUE_CHECKS_RUN[fn] += 1
    return True


class checks:
    """Turn the input checks of resad_kit's primitives on or off; query the current state.

    ``checks(False)`` switches the checks off at once for the calling thread; used as a
    context manager it restores the previous state on exit, also when an exception leaves
    the block. ``checks()`` changes nothing. ``bool(checks())`` is the current state. The
    state is per thread (like :func:`torch.set_grad_enabled`); a new thread starts from the
    process default, set by the ``RESAD_KIT_CHECKS`` environment variable at import.

    With checks off the public primitives call their unchecked cores directly: no shape,
    dtype or value check runs, in particular none that synchronises a device (finite,
    binary, ≥ 0). With checks on, the value checks are still skipped while ``torch.compile``
    traces. Invalid input then gives undefined results instead of an error: turn checks off
    only on hot paths whose inputs are known to be valid.

    Args:
        enabled: ``True`` or ``False`` to set the state, ``None`` to leave it as it is.

    Raises:
        TypeError: if ``enabled`` is not a bool or ``None``.

    Example:
        >>> import torch, resad_kit
        >>> from resad_kit.ops.losses import global_hinge_loss
        >>> scores, labels = torch.tensor([0.5, 0.5]), torch.tensor([0, 2])  # 2: not a label
        >>> global_hinge_loss(scores, labels)
        Traceback (most recent call last):
            ...
        ValueError: global_hinge_loss: `labels` must be binary (0/1 or bool); got 1 entries ...
        >>> with resad_kit.checks(False):  # no check runs: garbage in, garbage out
        ...     bool(resad_kit.checks()), global_hinge_loss(scores, labels)
        (False, tensor(0.5000))
        >>> bool(resad_kit.checks())  # restored on exit
        True
    """

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(
                f"resad_kit.checks: `enabled` must be True, False or None; "
                f"got {type(enabled).__name__}"
            )
        self.previous = checks_enabled()
        if enabled is not None:
            _STATE.enabled = enabled
        self.enabled = checks_enabled()

    def __enter__(self) -> checks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _STATE.enabled = self.previous

    def __bool__(self) -> bool:
        return self.enabled

    def __repr__(self) -> str:
        return f"resad_kit.checks({self.enabled})"


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Dtype used for thresholds, norms and reductions: float32, or float64 if any input is."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def is_real(value: object) -> bool:
    """True for a real scalar: ``int``, ``float`` or a numpy scalar (``np.float32``, ``np.int64``).

    Every ``numbers.Real`` counts, so float parameters accept numpy scalars; ``bool`` (and
    ``np.bool_``) is not a number here, and neither is a tensor.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_tensor(
    fn: str,
    name: str,
    x: object,
    *,
    min_ndim: int = 0,
    ndim: int | None = None,
    shape_doc: str = "",
    floating: bool = True,
    nonempty: bool = True,
    finite: bool = False,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of suitable rank and dtype (and finite); return it."""
    doc = f" {shape_doc}" if shape_doc else ""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: `{name}` must be a torch.Tensor{doc}; got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(
            f"{fn}: `{name}` must have {ndim} dimensions{doc}; got shape {tuple(x.shape)}"
        )
    if x.ndim < min_ndim:
        raise ValueError(
            f"{fn}: `{name}` must have at least {min_ndim} dimensions{doc}; "
            f"got shape {tuple(x.shape)}"
        )
    if floating and x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"{fn}: `{name}` must be float16, bfloat16, float32 or float64; got {x.dtype}"
        )
    if nonempty and x.numel() == 0:
        raise ValueError(f"{fn}: `{name}` must not be empty; got shape {tuple(x.shape)}")
    if finite:
        check_finite(fn, name, x)
    return x


def check_finite(fn: str, name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or ±inf (a sync: gated by :func:`value_check`)."""
    if not value_check(fn):
        return
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"{fn}: `{name}` must be finite; got {n_nan} NaN and {n_inf} infinite entries"
        )


def check_number(
    fn: str,
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    strict: bool = False,
    what: str = "a real number",
    non_number: type[Exception] = TypeError,
    requirement: str | None = None,
) -> float:
    """The one check of a Python number argument: real, finite and (optionally) ``≥ minimum``.

    Real means ``int``, ``float`` or a numpy scalar, not ``bool`` (see :func:`is_real`).
    A non-number raises ``non_number`` (``TypeError`` by default; message "must be
    {what}"); NaN, ±inf or a value below ``minimum`` (``≤ minimum`` when ``strict``) raise
    ``ValueError`` ("must be finite", "must be positive and finite", "must be finite and
    ≥ m", or "must be {requirement}" when given). Never touches a tensor, so it never
    synchronises a device; it runs whatever the checks switch says (it is cheap). Use it for
    every float parameter (``gamma``, ``eps``, ``margin``, weights, learning rates).

    Returns:
        ``value`` as a Python ``float``.

    Example:
        >>> from resad_kit.ops._validation import check_number
        >>> check_number("f", "gamma", 0.5, minimum=0.0)
        0.5
        >>> check_number("f", "eps", 0.0, minimum=0.0, strict=True)
        Traceback (most recent call last):
            ...
        ValueError: f: `eps` must be positive and finite; got 0.0
    """
    if not is_real(value):
        raise non_number(f"{fn}: `{name}` must be {what}; got {type(value).__name__} {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if minimum is None:
        default, ok = "finite", math.isfinite(number)
    else:
        above = number > minimum if strict else number >= minimum
        ok = math.isfinite(number) and above
        if strict and minimum == 0:
            default = "positive and finite"
        else:
            default = f"finite and {'>' if strict else '≥'} {minimum:g}"
    if not ok:
        raise ValueError(f"{fn}: `{name}` must be {requirement or default}; got {value!r}")
    return number


def check_same_shape(fn: str, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """Raise ``ValueError`` unless all tensors have the same shape."""
    shapes = [tuple(t.shape) for t in tensors]
    if any(s != shapes[0] for s in shapes[1:]):
        got = ", ".join(f"`{n}` {s}" for n, s in zip(names, shapes, strict=True))
        raise ValueError(f"{fn}: shapes must match; got {got}")


def check_broadcast_channels(
    fn: str, names: tuple[str, str], a: torch.Tensor, b: torch.Tensor
) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` share the last dim ``D`` and broadcast."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{fn}: `{names[0]}` and `{names[1]}` must have the same channel size D "
            f"(last dimension); got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(
            f"{fn}: `{names[0]}` and `{names[1]}` must be broadcastable; "
            f"got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        ) from None


def check_binary(fn: str, name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every entry of ``x`` is 0 or 1 (bool always is).

    The message counts the entries outside ``{0, 1}`` and shows one of them. A sync: gated by
    :func:`value_check`.
    """
    if x.dtype == torch.bool or not value_check(fn):
        return
    bad = x[(x != 0) & (x != 1)]
    if bad.numel():
        raise ValueError(
            f"{fn}: `{name}` must be binary (0/1 or bool); got {bad.numel()} entries outside "
            f"{{0, 1}}, e.g. {bad.flatten()[0].item()!r}"
        )


def check_dim(fn: str, x: torch.Tensor, dim: int) -> int:
    """Normalise a possibly negative ``dim`` for ``x``; raise a named error if out of range."""
    if x.ndim == 0:
        raise ValueError(f"{fn}: input must have at least 1 dimension; got a 0-d tensor")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(
            f"{fn}: `dim`={dim} is out of range for an input of shape {tuple(x.shape)}"
        )
    return dim % x.ndim


def check_positive_int(fn: str, name: str, value: object, *, optional: bool = False) -> int | None:
    """Return ``value`` if it is a positive int (or ``None`` when ``optional``); else raise."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "None or a positive int" if optional else "a positive int"
        raise ValueError(f"{fn}: `{name}` must be {allowed}; got {value!r}")
    return value


def patch_grid(fn: str, name: str, n: int, grid: object) -> tuple[int, int]:
    """The ``(h, w)`` grid of ``n`` row-major patches: ``grid`` checked, or a square inferred.

    ``name`` is the argument that holds the ``N`` patches (for the error messages).
    """
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"{fn}: `{name}` has N={n} patches, not a perfect square; "
                f"pass `grid`=(h, w) with h·w = N"
            )
        return side, side
    if not (
        isinstance(grid, (tuple, list))
        and len(grid) == 2
        and all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)
    ):
        raise ValueError(f"{fn}: `grid` must be a pair of positive ints (h, w); got {grid!r}")
    h, w = grid
    if h * w != n:
        raise ValueError(f"{fn}: `grid`=({h}, {w}) holds {h * w} patches but `{name}` has N={n}")
    return h, w
