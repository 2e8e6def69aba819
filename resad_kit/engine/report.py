"""A static HTML report of a run, ``<run>/index.html``, built from the run's own files.

:func:`write_report` reads what a run wrote into its folder and writes one
``index.html`` beside it (atomically), with relative links only, no script and no remote
resource: the folder can be copied and opened offline in any browser. Sections, each
present when its file is:

- a red banner when the backbone had random weights (``metrics.json``'s ``warning``, or
  the provenance's backbone);
- **Summary** (``metrics.json``): per ``(method, data set, shots, mode)`` our
  ``mean±std`` over seeds, the paper's number and Δ = ours − paper (as ``table.md``);
- **Per category**: each category's metrics, mean over seeds;
- **Scores** (``scores.csv``, written by ``resad-kit predict``): per-image scores and the
  suggested threshold;
- **Heat maps** (``heatmaps/**.png``): grouped by model, data set, category and defect
  type (read from each PNG's text chunks, see :func:`~resad_kit.engine.heatmaps.save_heatmaps`),
  each with its score and label;
- **Configuration** (``config.json``) and **Provenance** (``provenance.json``: versions,
  the backbone's weights fingerprint, the warnings logged during the run).
"""

from __future__ import annotations

import csv
import html
import json
import logging
import platform
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from resad_kit.engine.atomic import atomic_write
from resad_kit.engine.report_tables import category_table, html_table, summary_table_html
from resad_kit.engine.results_render import UNTRAINED_WARNING

__all__ = ["REPORT_NAME", "WarningCollector", "run_provenance", "write_report"]

REPORT_NAME = "index.html"
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1500px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#eee}td:nth-child(-n+4){text-align:left}
.banner{background:#c00;color:#fff;padding:.6em 1em;font-weight:bold;font-size:1.1em}
figure{display:inline-block;margin:.3em;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #ccc}
figcaption{font-size:12px}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:12px}
"""


class WarningCollector(logging.Handler):
    """Collects the messages of every WARNING (and worse) logged while it is attached."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(record.getMessage().split())
        if message not in self.messages:
            self.messages.append(message)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_provenance(
    backbone: Any = None, warnings: Sequence[str] = (), **extra: Any
) -> dict[str, Any]:
    """What produced a run: versions, the backbone and its weights fingerprint, warnings.

    Args:
        backbone: the :class:`~resad_kit.clip.ClipBackbone` (or ``None``).
        warnings: the warnings logged during the run (:class:`WarningCollector`).
        extra: more JSON-able fields (e.g. ``world_size``).

    Example:
        >>> from resad_kit.engine.report import run_provenance
        >>> p = run_provenance(warnings=["w"], world_size=1)
        >>> sorted(p["versions"])[:3], p["warnings"], p["world_size"]
        (['matplotlib', 'numpy', 'open_clip_torch'], ['w'], 1)
    """
    import torch

    out: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {
            name: _version(name)
            for name in ("resad-kit", "torch", "open_clip_torch", "numpy", "matplotlib")
        },
        "cuda": torch.version.cuda,
        "warnings": list(warnings),
    }
    if backbone is not None:
        from resad_kit.engine._feature_store import backbone_fingerprint

        out["backbone"] = {
            "model": backbone.model_name,
            "weights": backbone.weights,
            "pretrained": bool(backbone.trained),
            "image_size": backbone.image_size,
            "fingerprint_sha256": backbone_fingerprint(backbone),
        }
    return out | extra


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _gallery(out: Path) -> str:
    """The heat maps under ``out/heatmaps``, grouped by model, data set, category, defect."""
    from PIL import Image

    root = out / "heatmaps"
    files = sorted(root.rglob("*.png")) if root.is_dir() else []
    groups: dict[tuple[str, str], dict[str, list[tuple[Path, dict]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for f in files:
        with Image.open(f) as pic:
            text = dict(getattr(pic, "text", {}))
        folder = f.parent.relative_to(root).parts
        model, where = " / ".join(folder[:-2]) or "-", " / ".join(folder[-2:]) or "-"
        groups[(where, model)][text.get("defect") or "-"].append((f, text))
    if not groups:
        return "<p>No heat maps in this run.</p>"
    parts = []
    for (where, model), by_defect in sorted(groups.items()):
        parts.append(f"<details open><summary><b>{html.escape(where)}</b> — {html.escape(model)}")
        parts.append(f" ({sum(len(v) for v in by_defect.values())} images)</summary>")
        for defect, items in sorted(by_defect.items()):
            parts.append(f"<h4>defect: {html.escape(defect)}</h4>")
            for f, text in items:
                rel = f.relative_to(out).as_posix()
                label = {"1": "anomalous", "0": "normal"}.get(text.get("label", ""), "")
                score = text.get("score", "")
                caption = " · ".join(
                    x
                    for x in (text.get("path", f.name), f"score {score}" if score else "", label)
                    if x
                )
                parts.append(
                    f'<figure><a href="{html.escape(rel)}"><img src="{html.escape(rel)}" '
                    f'alt="{html.escape(caption)}" loading="lazy" width="900"></a>'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
        parts.append("</details>")
    return "\n".join(parts)


def _scores_section(out: Path, provenance: Mapping[str, Any] | None) -> str:
    path = out / "scores.csv"
    if not path.is_file():
        return ""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return ""
    threshold = (provenance or {}).get("threshold")
    note = ""
    if threshold:
        note = (
            f"<p>Suggested threshold: <b>{html.escape(str(threshold.get('value')))}</b> "
            f"({html.escape(str(threshold.get('how', '')))}). A heuristic, not a calibrated "
            "decision: check it on images whose answer you know.</p>"
        )
    return f"<h2>Scores</h2>\n{note}\n{html_table(rows[0], rows[1:], 'scores')}"


def write_report(
    out_dir: str | Path,
    *,
    provenance: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> Path:
    """Write ``out_dir/index.html`` from the run's files (module docstring).

    Args:
        out_dir: the run's folder.
        provenance: :func:`run_provenance` of the run; also written to
            ``provenance.json`` (default: read from ``provenance.json`` when present).
        title: the page's title (default: from the results' methods, or the folder name).

    Returns:
        The path of ``index.html``.

    Raises:
        ValueError: ``out_dir`` is not a folder, or a ``metrics.json`` that is not a
            results file.
        OSError: the report could not be written (a previous one stays intact).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from resad_kit.engine.report import write_report
        >>> from resad_kit.engine.results import CategoryResult, write_results
        >>> from resad_kit.metrics import METRIC_NAMES
        >>> r = CategoryResult(
        ...     "toy", "a", 1, 0, "training_free", dict.fromkeys(METRIC_NAMES, 0.5), ("r.png",), 4
        ... )
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = write_results([r], tmp, backbone_label="tiny", trained=False, config={})
        ...     page = write_report(tmp).read_text()
        >>> "NOT comparable" in page, "<td>50.0</td>" in page, "<script" in page
        (True, True, False)
    """
    from resad_kit.engine.results import load_results
    from resad_kit.engine.results_records import aggregate_by_method

    out = Path(out_dir)
    if not out.is_dir():
        raise ValueError(f"write_report: `out_dir` {str(out)!r} is not a folder")
    if provenance is not None:
        provenance = json.loads(json.dumps(dict(provenance), default=str))
        atomic_write(out / "provenance.json", json.dumps(provenance, indent=1) + "\n")
    else:
        provenance = _read_json(out / "provenance.json")
    document = _read_json(out / "metrics.json")
    body: list[str] = []
    warning = (document or {}).get("metadata", {}).get("warning")
    if not warning and (provenance or {}).get("backbone", {}).get("pretrained") is False:
        warning = UNTRAINED_WARNING
    if warning:
        body.append(f'<p class="banner">WARNING: {html.escape(warning)}</p>')
    methods: list[str] = []
    if document is not None:
        records = load_results(out)
        by_method = aggregate_by_method(records)
        methods = list(by_method)
        aggs = [a for group in by_method.values() for a in group.values()]
        meta = document.get("metadata", {})
        body += [
            "<h2>Summary</h2>",
            f"<p>Backbone: {html.escape(str(meta.get('backbone', '')))}. Percent; ours = "
            "mean±std over seeds of the unweighted mean over the categories (population std, "
            "ddof=0); paper = the paper's Tables 6–10 (mean±std over its three runs); Δ = "
            "ours − paper in points; – = no comparable number (see table.md's notes).</p>",
            summary_table_html(aggs),
            "<h2>Per category</h2>",
            category_table(records),
        ]
    scores = _scores_section(out, provenance)
    if scores:
        body.append(scores)
    body += [
        "<h2>Heat maps</h2>",
        "<p>Input | overlay | mask (+ branches). One colour scale per category and model: a "
        "colour means the same score on every image of that category; categories are not "
        "comparable with each other. Click an image for full size.</p>",
        _gallery(out),
    ]
    config = _read_json(out / "config.json")
    if config is not None:
        body += [
            "<h2>Configuration</h2>",
            f"<pre>{html.escape(json.dumps(config, indent=1))}</pre>",
        ]
    if provenance:
        body += [
            "<h2>Provenance</h2>",
            f"<pre>{html.escape(json.dumps(provenance, indent=1))}</pre>",
        ]
    name = title or (", ".join(methods) + " results" if methods else out.name)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(name)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(name)}</h1>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
    return atomic_write(out / REPORT_NAME, page)
