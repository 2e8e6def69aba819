"""Heat-map figures of anomaly maps on their images, as PNG files people can read.

:func:`heatmap_figure` draws one matplotlib :class:`~matplotlib.figure.Figure` with panels
side by side, each at least 256 px (or the image's own size when larger):

1. **input**: the image, with the normalisation undone (``x · std + mean``, clipped);
2. **overlay**: the image alpha-blended with the anomaly map in a matplotlib colour map
   (default ``"turbo"``: dark blue = ``vmin``, red = ``vmax``), with the ground-truth
   outline in white when a mask is given;
3. **mask** (when given): the ground truth, white = anomalous;
4. optionally one panel per branch map (e.g. Res²CLIP's ``text``/``visual``/``residual``),
   on the same colour scale;

with a colour bar labelled with the value range, and a title holding the file, the image
score, the label (normal / anomalous) and the defect type (the image's folder name). A
backbone with random weights puts a red "UNTRAINED BACKBONE — not meaningful" mark on the
figure. :func:`overlay` is the same composition as one plain RGB picture at the image's
size (no title, no colour bar).

**Colour scale.** Stretching each map to its own min and max makes every image look
anomalous somewhere. :func:`save_heatmaps` uses one range for all maps it is given
(``vmin``/``vmax`` when passed, else their global min and max): call it once per category
with the category's range over all its test maps, so that a colour means the same score on
every image of that category. Scores are not calibrated across categories, so colours of
two categories are not comparable; the figure's footer says so.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import torch

from resad_kit.engine.atomic import atomic_write
from resad_kit.engine.heatmap_panels import DEFAULT_CMAP, _panels, _resize, _to_hw, overlay
from resad_kit.ops._validation import check_finite, check_tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "UNTRAINED_MARK", "defect_type", "figure_png", "heatmap_figure", "overlay", "save_heatmaps"
]  # fmt: skip

UNTRAINED_MARK = "UNTRAINED BACKBONE — not meaningful"
"""The mark a heat map of a backbone with random weights carries."""
MIN_PANEL = 256  # px: the smallest panel side drawn
_SCALE_NOTE = "one colour scale per category: a colour is the same score on every image of it"


def _title(name: str, score: float | None, label: int | None, defect: str | None) -> str:
    parts = [name] if name else []
    if score is not None:
        parts.append(f"score {score:.4g}")
    if label is not None:
        parts.append("anomalous" if label else "normal")
    if defect:
        parts.append(f"defect: {defect}")
    return " · ".join(parts)


def heatmap_figure(
    image: torch.Tensor,
    anomaly_map: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    vmin: float | None = None,
    vmax: float | None = None,
    score: float | None = None,
    label: int | None = None,
    defect: str | None = None,
    name: str = "",
    trained: bool = True,
    branches: Mapping[str, torch.Tensor] | None = None,
    alpha: float = 0.5,
    cmap: str = DEFAULT_CMAP,
) -> Figure:
    """One readable heat-map figure: panels, colour bar, title, and the untrained mark.

    Args:
        image, anomaly_map, mask, mean, std, vmin, vmax, alpha, cmap: as :func:`overlay`.
        score: the image score, shown in the title.
        label: ``0`` normal, ``1`` anomalous (ground truth), shown in the title.
        defect: the defect type (e.g. ``"crack"``), shown in the title.
        name: the image's name, first in the title.
        trained: ``False`` (random backbone weights) adds :data:`UNTRAINED_MARK`.
        branches: branch name → ``(H', W')`` map, drawn as extra panels on the same scale.

    Returns:
        A :class:`matplotlib.figure.Figure` (no pyplot state) with one axes per panel
        (titled ``input``, ``overlay``, ``mask``, branch names) and a colour-bar axes
        (label ``"colorbar"``); each panel is ``max(256, H) × max(256, W)`` pixels.

    Raises:
        ValueError: as :func:`overlay`; a branch map that is not ``(H', W')``.

    Example:
        >>> import torch
        >>> from resad_kit.engine.heatmaps import heatmap_figure
        >>> fig = heatmap_figure(
        ...     torch.zeros(3, 64, 64),
        ...     torch.rand(64, 64),
        ...     mean=None,
        ...     std=None,
        ...     score=0.7,
        ...     label=1,
        ...     defect="crack",
        ...     trained=False,
        ... )
        >>> [ax.get_title() for ax in fig.axes if ax.get_label() != "colorbar"]
        ['input', 'overlay']
        >>> any("UNTRAINED" in t.get_text() for t in fig.texts)
        True
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fn = "heatmap_figure"
    panels, lo, hi, (h, w) = _panels(
        fn, image, anomaly_map, mask, mean, std, vmin, vmax, alpha, cmap
    )
    titles = ["input", "overlay", "mask"][: len(panels)]
    extra = []
    for key, bmap in (branches or {}).items():
        b = _resize(_to_hw(fn, f"branches[{key!r}]", bmap), (h, w), "bilinear").numpy()
        extra.append((str(key), b))
    ph, pw = max(MIN_PANEL, h), max(MIN_PANEL, w)
    gap, left, top, bottom, bar = 12, 12, 72, 34, 90
    n = len(panels) + len(extra)
    width, height = left + n * (pw + gap) + bar, top + ph + bottom
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    scale = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-12)

    def axes(i: int, title: str) -> Any:
        rect = ((left + i * (pw + gap)) / width, bottom / height, pw / width, ph / height)
        ax = fig.add_axes(rect)
        ax.set_axis_off()
        ax.set_title(title, fontsize=10)
        return ax

    for i, (panel, title) in enumerate(zip(panels, titles, strict=False)):
        axes(i, title).imshow(panel, interpolation="nearest", aspect="auto")
    for j, (key, b) in enumerate(extra):
        ax = axes(len(panels) + j, f"branch: {key}")
        ax.imshow(b, cmap=cmap, norm=scale, interpolation="nearest", aspect="auto")
    cax = fig.add_axes(
        ((width - bar + 10) / width, bottom / height, 16 / width, ph / height), label="colorbar"
    )
    bar_ = fig.colorbar(ScalarMappable(norm=scale, cmap=cmap), cax=cax)
    bar_.set_label(f"anomaly score [{lo:.3g}, {hi:.3g}]", fontsize=8)
    bar_.ax.tick_params(labelsize=7)
    fig.suptitle(_title(name, score, label, defect), fontsize=10, y=1 - 8 / height, va="top")
    fig.text(0.5, 6 / height, _SCALE_NOTE, ha="center", va="bottom", fontsize=7)
    if not trained:
        fig.text(
            0.5,
            1 - 30 / height,
            UNTRAINED_MARK,
            ha="center",
            va="top",
            fontsize=11,
            weight="bold",
            color="white",
            bbox={"facecolor": "red", "edgecolor": "none", "pad": 2},
        )
    return fig


def figure_png(fig: Figure, metadata: Mapping[str, str] | None = None) -> bytes:
    """The PNG bytes of ``fig`` at its own size (``metadata``: PNG text chunks)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    png = io.BytesIO()
    canvas.print_png(png, metadata=dict(metadata or {}))
    return png.getvalue()


def _file_stem(path: str | PurePath) -> str:
    """``hazelnut/test/crack/003.png`` → ``hazelnut_test_crack_003`` (safe characters only)."""
    parts = [p for p in PurePath(path).parts if p not in ("/", "\\") and not p.endswith(":\\")]
    if not parts:
        raise ValueError(f"save_heatmaps: empty path {str(path)!r}")
    parts[-1] = PurePath(parts[-1]).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("._-")
    return stem or "image"


def defect_type(path: str | PurePath) -> str | None:
    """The folder an image lies in (MVTec: the defect type, ``good`` for normal), if any.

    Example:
        >>> from resad_kit.engine.heatmaps import defect_type
        >>> defect_type("hazelnut/test/crack/003.png"), defect_type("x.png")
        ('crack', None)
    """
    parent = PurePath(path).parent.name
    return parent or None


def save_heatmaps(
    images: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor | None,
    paths: Sequence[str | PurePath],
    out_dir: str | Path,
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    limit: int | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    scores: Sequence[float] | torch.Tensor | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    trained: bool = True,
    branches: Mapping[str, torch.Tensor] | None = None,
    cmap: str = DEFAULT_CMAP,
) -> list[Path]:
    """Write one :func:`heatmap_figure` PNG per image, with one colour scale for all of them.

    Call it once per category. The colour range is ``[vmin, vmax]`` when given (pass the
    category's range over all its test maps), else the min and max over all ``maps``
    given (not only the first ``limit``).

    File names come from ``paths``: every component joined by ``_``, the extension
    replaced by ``.png``, characters other than ``A–Z a–z 0–9 . _ -`` replaced; pass
    paths relative to the data root (``Sample.relative_path``), which include the
    category, for short names that do not collide across categories. Two paths that map
    to the same name get ``-1``, ``-2``, … suffixes. Existing files are replaced
    atomically (a failed write keeps the previous PNG). Each PNG carries text chunks
    ``path``, ``score``, ``label``, ``defect``, ``vmin``, ``vmax`` and ``trained``, which
    the HTML report (:mod:`resad_kit.engine.report`) reads.

    Args:
        images: ``(B, 3, H, W)`` normalised images.
        maps: ``(B, H', W')`` or ``(B, 1, H', W')`` anomaly maps.
        masks: ``(B, H'', W'')`` or ``(B, 1, H'', W'')`` ground truth, or ``None``.
        paths: ``B`` image paths (names only; nothing is read). The defect type is the
            path's folder (:func:`defect_type`).
        out_dir: folder to write to (created if missing).
        mean, std: the images' normalisation (see :func:`overlay`).
        limit: write only the first ``limit`` images (``None``: all).
        vmin, vmax: colour range (see above).
        scores: ``B`` image scores, or ``None``.
        labels: ``B`` labels (1 = anomalous); default: from the masks when given.
        trained: ``False`` marks every figure :data:`UNTRAINED_MARK`.
        branches: branch name → ``(B, H', W')`` maps, drawn as extra panels.
        cmap: a matplotlib colour map name.

    Returns:
        The written files, in input order.

    Raises:
        ValueError: batch sizes that differ, wrong shapes, a bad ``limit``, empty paths.

    Example:
        >>> import tempfile, torch
        >>> from resad_kit.engine.heatmaps import save_heatmaps
        >>> images, maps = torch.zeros(3, 3, 8, 8), torch.rand(3, 8, 8)
        >>> paths = ["pill/test/crack/000.png", "pill/test/good/000.png", "pill/test/good/000.png"]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     files = save_heatmaps(images, maps, None, paths, tmp, mean=None, std=None)
        >>> [f.name for f in files]
        ['pill_test_crack_000.png', 'pill_test_good_000.png', 'pill_test_good_000-1.png']
    """
    fn = "save_heatmaps"
    images = check_tensor(fn, "images", images, ndim=4, shape_doc="(B, 3, H, W)")
    maps = check_tensor(fn, "maps", maps, min_ndim=3, shape_doc="(B, H, W)", floating=False)
    if maps.ndim not in (3, 4):
        raise ValueError(f"{fn}: `maps` must be (B, H, W) or (B, 1, H, W); got {tuple(maps.shape)}")
    n = int(images.shape[0])
    paths = [paths] if isinstance(paths, str | PurePath) else list(paths)
    sizes = {"images": n, "maps": int(maps.shape[0]), "paths": len(paths)}
    if masks is not None:
        masks = check_tensor(fn, "masks", masks, min_ndim=3, floating=False)
        sizes["masks"] = int(masks.shape[0])
    for key, values in (("scores", scores), ("labels", labels), *(branches or {}).items()):
        if values is not None:
            sizes[key] = len(values)
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{fn}: batch sizes must match; got {sizes}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"{fn}: `limit` must be a non-negative int or None; got {limit!r}")
    check_finite(fn, "maps", maps)
    lo = float(maps.min()) if vmin is None else float(vmin)
    hi = float(maps.max()) if vmax is None else float(vmax)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    written: list[Path] = []
    for i in range(n if limit is None else min(limit, n)):
        stem = _file_stem(paths[i])
        name, k = stem, 0
        while name in used:
            k += 1
            name = f"{stem}-{k}"
        used.add(name)
        mask = None if masks is None else masks[i]
        label = None
        if labels is not None:
            label = int(labels[i])
        elif mask is not None:
            label = int(bool((mask != 0).any()))
        score = None if scores is None else float(scores[i])
        defect = defect_type(paths[i])
        fig = heatmap_figure(
            images[i], maps[i], mask, mean=mean, std=std, vmin=lo, vmax=hi, score=score,
            label=label, defect=defect, name=PurePath(paths[i]).name, trained=trained,
            branches={key: b[i] for key, b in (branches or {}).items()}, cmap=cmap,
        )  # fmt: skip
        info = {"path": str(PurePath(paths[i]).as_posix()), "vmin": f"{lo!r}", "vmax": f"{hi!r}"}
        info |= {"score": "" if score is None else f"{score!r}", "defect": defect or ""}
        info |= {"label": "" if label is None else str(label), "trained": str(bool(trained))}
        target = out / f"{name}.png"
        written.append(atomic_write(target, figure_png(fig, info)))  # never a half-written PNG
    return written
