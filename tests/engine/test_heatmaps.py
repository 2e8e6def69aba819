"""Heat maps: overlay panels and colours, the readable figure (size, colour bar, title,
untrained mark), the per-category colour scale, file names, atomic writes."""

from __future__ import annotations

from pathlib import Path, PurePath

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from resad_kit._image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from resad_kit.engine import heatmaps
from resad_kit.engine.heatmaps import (
    UNTRAINED_MARK,
    heatmap_figure,
    overlay,
    save_heatmaps,
)

MEAN, STD = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def _normalised(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` → the data set's normalised ``(3, H, W)`` float32 tensor."""
    x = (pixels.astype(np.float32) / 255.0 - np.asarray(MEAN)) / np.asarray(STD)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).float()


def _rgb(t: float) -> tuple[int, int, int]:
    """The default colour map's colour at ``t`` (matplotlib's own table), as uint8."""
    return tuple(int(v) for v in np.rint(np.asarray(matplotlib.colormaps["turbo"](t)[:3]) * 255))


HOT, COLD = _rgb(1.0), _rgb(0.0)


def _panels(pic: Image.Image, n: int) -> list[np.ndarray]:
    arr = np.asarray(pic)
    return np.split(arr, n, axis=1)


def test_overlay_layout_image_panel_and_mask_panel() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    mask = torch.zeros(1, 12, 20)
    mask[0, 3:9, 5:15] = 1
    amap = torch.rand(12, 20)
    pic = overlay(_normalised(pixels), amap, mask, mean=MEAN, std=STD)
    assert pic.mode == "RGB"
    assert pic.size == (60, 12)
    image_panel, _, mask_panel = _panels(pic, 3)
    assert np.abs(image_panel.astype(int) - pixels).max() <= 1  # normalisation undone
    np.testing.assert_array_equal(mask_panel, np.repeat(mask[0, ..., None].numpy() * 255, 3, -1))
    assert overlay(_normalised(pixels), amap, mean=MEAN, std=STD).size == (40, 12)


def test_hot_pixel_gets_the_hot_end_and_cold_pixel_the_cold_end() -> None:
    image = torch.zeros(3, 8, 8)  # black, without normalisation
    amap = torch.full((8, 8), 0.3)
    amap[2, 5] = 0.9
    amap[6, 1] = 0.1
    pic = overlay(image, amap, mean=None, std=None, alpha=1.0)
    heat = _panels(pic, 2)[1]
    assert tuple(heat[2, 5]) == HOT
    assert tuple(heat[6, 1]) == COLD
    # an explicit range: scores at or beyond vmax are hot, at or below vmin cold
    pic = overlay(image, amap, mean=None, std=None, vmin=0.3, vmax=0.5, alpha=1.0)
    heat = _panels(pic, 2)[1]
    assert tuple(heat[2, 5]) == HOT
    assert tuple(heat[0, 0]) == COLD


def test_mask_outline_is_drawn_white_on_the_overlay() -> None:
    mask = torch.zeros(10, 10)
    mask[2:7, 3:8] = 1
    pic = overlay(torch.zeros(3, 10, 10), torch.zeros(10, 10), mask, mean=None, std=None)
    heat = _panels(pic, 3)[1]
    white = np.all(heat == 255, axis=-1)
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:7, 3:8] = True
    expected[3:6, 4:7] = False  # interior
    np.testing.assert_array_equal(white, expected)


def test_maps_and_masks_of_another_size_are_resized() -> None:
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1
    pic = overlay(torch.zeros(3, 16, 16), torch.rand(1, 8, 8), mask, mean=None, std=None)
    assert pic.size == (48, 16)
    mask_panel = _panels(pic, 3)[2][..., 0]
    assert (mask_panel[:8, :8] == 255).all()
    assert (mask_panel[8:] == 0).all()


def test_constant_map_without_range_is_cold() -> None:
    pic = overlay(torch.zeros(3, 4, 4), torch.full((4, 4), 3.0), mean=None, std=None, alpha=1.0)
    assert {tuple(p) for p in _panels(pic, 2)[1].reshape(-1, 3)} == {COLD}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image": torch.zeros(4, 8, 8)}, "image"),
        ({"image": torch.zeros(8, 8)}, "image"),
        ({"anomaly_map": torch.zeros(2, 8, 8)}, "anomaly_map"),
        ({"anomaly_map": torch.full((8, 8), float("nan"))}, "finite"),
        ({"mask": torch.zeros(3, 8, 8)}, "mask"),
        ({"vmin": 1.0, "vmax": 0.0}, "vmin"),
        ({"alpha": 1.5}, "alpha"),
        ({"mean": (0.5, 0.5), "std": (0.5, 0.5)}, "mean"),
        ({"mean": (0.5,) * 3, "std": None}, "both"),
    ],
)
def test_overlay_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"image": torch.zeros(3, 8, 8), "anomaly_map": torch.zeros(8, 8), "mask": None}
    args |= {"mean": None, "std": None} | kwargs
    with pytest.raises(ValueError, match=match):
        overlay(**args)


def test_save_heatmaps_names_are_unique_and_derived_from_paths(tmp_path: Path) -> None:
    paths = [
        "hazelnut/test/crack/000.png",
        "hazelnut/test/good/000.png",
        "hazelnut/test/good/000.png",  # the same path twice
        "hazelnut/test/good/000.jpg",  # same stem, other extension
        "hazelnut/test/good/000-1.png",  # already the name of a suffixed duplicate
        Path("/abs/data/hazelnut/test/odd name (1).png"),
    ]
    n = len(paths)
    files = save_heatmaps(
        torch.zeros(n, 3, 8, 8),
        torch.rand(n, 1, 8, 8),
        torch.zeros(n, 8, 8),
        paths,
        tmp_path / "heat",
        mean=MEAN,
        std=STD,
    )
    names = [f.name for f in files]
    assert len(set(names)) == n
    assert names[:4] == [
        "hazelnut_test_crack_000.png",
        "hazelnut_test_good_000.png",
        "hazelnut_test_good_000-1.png",
        "hazelnut_test_good_000-2.png",
    ]
    assert names[4] == "hazelnut_test_good_000-1-1.png"
    assert names[5] == "abs_data_hazelnut_test_odd-name-1.png"
    for f in files:
        with Image.open(f) as pic:
            assert pic.mode in ("RGB", "RGBA")
            assert pic.text["defect"] == PurePath(str(paths[files.index(f)])).parent.name


def _spy_figures(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record every heat-map figure's arguments (the real figure is still drawn)."""
    calls: list[dict] = []
    real = heatmaps.heatmap_figure

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(heatmaps, "heatmap_figure", spy)
    return calls


def test_save_heatmaps_uses_one_colour_scale_and_limit(tmp_path, monkeypatch) -> None:
    images = torch.zeros(3, 3, 6, 6)
    maps = torch.stack([torch.full((6, 6), 0.25), torch.linspace(0, 1, 36).view(6, 6)])
    maps = torch.cat([maps, torch.full((1, 6, 6), 2.0)])
    calls = _spy_figures(monkeypatch)
    files = save_heatmaps(
        images, maps, None, ["a.png", "b.png", "c.png"], tmp_path, mean=None, std=None, limit=2
    )
    assert [f.name for f in files] == ["a.png", "b.png"]
    # the range is over all three maps (0 … 2), not only the ones drawn, nor each map's own
    assert [(c["vmin"], c["vmax"]) for c in calls] == [(0.0, 2.0)] * 2
    assert Image.open(files[0]).text["vmin"] == "0.0"
    assert Image.open(files[0]).text["vmax"] == "2.0"
    # an explicit category range wins
    calls.clear()
    save_heatmaps(
        images, maps, None, ["a.png"] * 3, tmp_path, mean=None, std=None, vmin=0.0, vmax=0.25,
        limit=1,
    )  # fmt: skip
    assert (calls[0]["vmin"], calls[0]["vmax"]) == (0.0, 0.25)


def test_save_heatmaps_titles_carry_score_label_defect(tmp_path, monkeypatch) -> None:
    calls = _spy_figures(monkeypatch)
    masks = torch.zeros(2, 8, 8)
    masks[0, 2:4, 2:4] = 1
    paths = ["pill/test/crack/000.png", "pill/test/good/001.png"]
    files = save_heatmaps(
        torch.zeros(2, 3, 8, 8), torch.rand(2, 8, 8), masks, paths, tmp_path,
        mean=None, std=None, scores=torch.tensor([0.75, 0.125]), trained=False,
    )  # fmt: skip
    assert [(c["score"], c["label"], c["defect"], c["trained"]) for c in calls] == [
        (0.75, 1, "crack", False),  # labels from the masks when not given
        (0.125, 0, "good", False),
    ]
    text = Image.open(files[0]).text
    assert (text["score"], text["label"], text["defect"], text["trained"]) == (
        "0.75", "1", "crack", "False"
    )  # fmt: skip


def test_heatmap_figure_is_readable() -> None:
    """Size ≥ 256 px per panel, a colour bar with the value range, the title, the mark."""
    from resad_kit.clip import ClipBackbone

    tiny = ClipBackbone.tiny()
    mask = torch.zeros(64, 64)
    mask[10:20, 10:20] = 1
    fig = heatmap_figure(
        torch.zeros(3, 64, 64), torch.linspace(0.5, 3.0, 64 * 64).view(64, 64), mask,
        mean=None, std=None, score=0.8125, label=1, defect="crack", name="003.png",
        trained=tiny.trained, branches={"text": torch.rand(16, 16)},
    )  # fmt: skip
    panels = [ax for ax in fig.axes if ax.get_label() != "colorbar"]
    assert [ax.get_title() for ax in panels] == ["input", "overlay", "mask", "branch: text"]
    dpi = fig.get_dpi()
    width, height = fig.get_size_inches() * dpi
    for ax in panels:
        box = ax.get_position()
        assert round(box.width * width) >= 256
        assert round(box.height * height) >= 256
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "colorbar"]
    lo, hi = sorted(bar.get_ylim())
    assert (lo, hi) == pytest.approx((0.5, 3.0))
    assert "[0.5, 3]" in bar.get_ylabel()
    title = fig.get_suptitle()
    for part in ("003.png", "0.8125", "anomalous", "crack"):
        assert part in title
    texts = [t.get_text() for t in fig.texts]
    assert UNTRAINED_MARK in texts  # the tiny backbone has random weights
    assert any("colour scale" in t for t in texts)
    trained = heatmap_figure(torch.zeros(3, 300, 280), torch.rand(300, 280), mean=None, std=None)
    assert UNTRAINED_MARK not in [t.get_text() for t in trained.texts]
    box = trained.axes[0].get_position()
    size = trained.get_size_inches() * trained.get_dpi()
    assert (round(box.width * size[0]), round(box.height * size[1])) == (280, 300)
    with pytest.raises(ValueError, match="cmap"):
        heatmap_figure(torch.zeros(3, 8, 8), torch.rand(8, 8), mean=None, std=None, cmap="nope")


def test_save_heatmaps_rejects_bad_input(tmp_path: Path) -> None:
    images, maps = torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8)
    common = {"mean": None, "std": None}
    with pytest.raises(ValueError, match="batch sizes"):
        save_heatmaps(images, maps[:1], None, ["a", "b"], tmp_path, **common)
    with pytest.raises(ValueError, match="batch sizes"):
        save_heatmaps(images, maps, None, ["a"], tmp_path, **common)
    with pytest.raises(ValueError, match="batch sizes"):
        save_heatmaps(images, maps, torch.zeros(3, 8, 8), ["a", "b"], tmp_path, **common)
    with pytest.raises(ValueError, match="maps"):
        save_heatmaps(images, torch.zeros(2, 2, 8, 8, 1), None, ["a", "b"], tmp_path, **common)
    with pytest.raises(ValueError, match="images"):
        save_heatmaps(torch.zeros(2, 8, 8), maps, None, ["a", "b"], tmp_path, **common)
    with pytest.raises(ValueError, match="limit"):
        save_heatmaps(images, maps, None, ["a", "b"], tmp_path, limit=-1, **common)
    with pytest.raises(ValueError, match="finite"):
        save_heatmaps(images, maps / 0, None, ["a", "b"], tmp_path, **common)
    with pytest.raises(ValueError, match="empty path"):
        save_heatmaps(images, maps, None, ["", "b"], tmp_path, **common)


def test_real_sample_overlays_undo_the_dataset_normalisation(tmp_path: Path) -> None:
    """The shipped MVTec sample: image panel = the resized image, mask panel = the mask."""
    from resad_kit.data import AnomalyDataset

    root = Path(__file__).resolve().parents[2] / "examples" / "data" / "mvtec_mini"
    ds = AnomalyDataset(root, "transistor", "test", image_size=32, mean=MEAN, std=STD)
    index = next(i for i, s in enumerate(ds.samples) if s.label == 1)
    item = ds[index]
    sample = ds.samples[index]
    files = save_heatmaps(
        item["image"][None],
        torch.rand(1, 32, 32),
        item["mask"][None],
        [sample.relative_path],
        tmp_path,
        mean=MEAN,
        std=STD,
    )
    assert files[0].name == sample.relative_path.replace("/", "_")
    assert Image.open(files[0]).text["label"] == "1"
    pic = overlay(item["image"], torch.rand(32, 32), item["mask"], mean=MEAN, std=STD)
    image_panel, _, mask_panel = _panels(pic, 3)
    plain = AnomalyDataset(root, "transistor", "test", image_size=32, mean=None, std=None)
    expected = plain[index]["image"].permute(1, 2, 0).numpy() * 255
    assert np.abs(image_panel.astype(float) - expected).max() <= 1.0
    np.testing.assert_array_equal(mask_panel[..., 0] > 0, item["mask"][0].numpy() > 0)
    assert (mask_panel[..., 0] > 0).any()


def test_heatmap_files_are_written_atomically(tmp_path, monkeypatch):
    """A failed write leaves the previous PNG intact and no partial file (issue 18)."""

    import resad_kit.engine.atomic as atomic

    images, maps = torch.rand(1, 3, 16, 16), torch.rand(1, 16, 16)
    kwargs = {"mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD, "vmin": 0.0, "vmax": 1.0}
    (first,) = save_heatmaps(images, maps, None, ["good/x.png"], tmp_path, **kwargs)
    before = first.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_heatmaps(images, 1 - maps, None, ["good/x.png"], tmp_path, **kwargs)
    assert first.read_bytes() == before
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]
