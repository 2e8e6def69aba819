"""`resad-kit predict` on a plain folder of images (no data set layout), offline with the
tiny backbone: its scores are the library's Res2CLIP predictions for the same inputs, the
threshold is the leave-one-out maximum over the references, and the report links every
heat map."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resad_kit.cli import main
from resad_kit.clip import ClipBackbone
from resad_kit.methods import Res2CLIP, Res2CLIPConfig

SIZE = 32  # --image-size of the tiny backbone (a multiple of its patch, 8)


def _write_images(folder: Path, names: list[str], seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    refs = _write_images(tmp / "good", ["a.png", "b.png", "c.jpg"], seed=0)
    images = _write_images(tmp / "check", ["x.png", "sub/y.png", "z.bmp"], seed=1)
    (tmp / "check" / "notes.txt").write_text("not an image")
    out = tmp / "out"
    argv = [
        "predict", "--refs", str(tmp / "good"), "--images", str(tmp / "check"),
        "--method", "res2clip", "--backbone", "tiny", "--image-size", str(SIZE),
        "--device", "cpu", "--no-progress", "--heatmaps", "2", "--out", str(out),
    ]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # repeatable and light on a shared machine
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return out, refs, images


def _library(refs: list[Path], images: list[Path]) -> tuple[torch.Tensor, float]:
    """The same inputs through the library: Res2CLIP on the tiny backbone."""
    backbone = ClipBackbone.tiny(seed=0, image_size=SIZE)
    model = Res2CLIP(backbone, Res2CLIPConfig.paper("training_free"))

    def load(paths: list[Path]) -> torch.Tensor:
        return torch.stack([backbone.preprocess(Image.open(p)) for p in paths])

    ref, img = load(refs), load(images)
    with torch.inference_mode():
        held_out = [
            float(model.fit_references(ref[[j for j in range(3) if j != i]])(ref[i : i + 1])
                  .image_score[0])
            for i in range(3)
        ]  # fmt: skip
        scores = model.fit_references(ref)(img).image_score
    return scores, max(held_out)


def test_scores_equal_the_library_predictions(predicted):
    out, refs, images = predicted
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["image"] for r in rows] == ["sub/y.png", "x.png", "z.bmp"]  # sorted, recursive
    by_name = {"x.png": images[0], "sub/y.png": images[1], "z.bmp": images[2]}
    expected, threshold = _library(refs, [by_name[r["image"]] for r in rows])
    got = torch.tensor([float(r["score"]) for r in rows])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["threshold"]["value"] == pytest.approx(threshold, rel=1e-6)
    assert len(provenance["threshold"]["held_out_scores"]) == 3
    assert [r["above_threshold"] for r in rows] == [str(s > threshold) for s in got.tolist()]
    assert provenance["backbone"]["pretrained"] is False


def test_heat_maps_and_report(predicted):
    out, _, _ = predicted
    pngs = sorted((out / "heatmaps").rglob("*.png"))
    assert len(pngs) == 2  # --heatmaps 2: the two highest scores
    rows = list(csv.DictReader((out / "scores.csv").open()))
    top = sorted(rows, key=lambda r: -float(r["score"]))[:2]
    texts = [Image.open(p).text for p in pngs]
    assert sorted(t["path"] for t in texts) == sorted(r["image"] for r in top)
    assert {t["trained"] for t in texts} == {"False"}  # the untrained mark is drawn
    page = (out / "index.html").read_text()
    links = set(re.findall(r'(?:src|href)="([^"]+)"', page))
    assert len(links) == 2
    assert all((out / link).is_file() for link in links)
    for r in rows:
        assert f"<td>{r['score']}</td>" in page
    assert "Suggested threshold" in page


def test_predict_usage_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        main(["predict", "--refs", str(tmp_path / "empty"), "--images", str(tmp_path),
              "--backbone", "tiny", "--out", str(tmp_path / "o")])  # fmt: skip
    assert info.value.code == 2
    assert "--refs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
