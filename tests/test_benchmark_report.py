"""benchmarks/report.py: every figure of docs/benchmarks.md is computed from the JSON.

The page is rendered from the committed runs and from small JSON files written here, and its
figures are checked against numbers recomputed from the raw JSON (with :mod:`json` and
:mod:`statistics`, not through the report's own code). Only the plot test needs matplotlib
(the ``bench`` extra); the page itself renders without it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PAGE = ROOT / "docs" / "benchmarks.md"
if str(BENCH) not in sys.path:  # the report's modules import each other by plain name
    sys.path.insert(0, str(BENCH))

from report_data import Case, load  # noqa: E402
from report_format import mib, ms, ratio, support, support_range, table  # noqa: E402
from report_page import render  # noqa: E402
from report_plots import plot_names  # noqa: E402

K4 = {"kernel": "retrieve", "shots": 4, "dim": 768, "dtype": "float32", "device": "cpu"}
RETRIEVE_SEPARATE = "`retrieve`, 4 layers, vs official path (D = 768), separate cases"


def _committed_runs() -> list[Path]:
    """The JSON files that docs/benchmarks.md lists as its runs, in the page's order."""
    found = re.findall(r"^- `(benchmarks/runs/[^`]+\.json)`:", PAGE.read_text(), re.MULTILINE)
    assert found, "docs/benchmarks.md lists no run of benchmarks/runs/"
    return [ROOT / name for name in found]


def _committed_revisions() -> Path | None:
    """The regression check's JSON that docs/benchmarks.md names, if any."""
    found = re.findall(r"^`(benchmarks/runs/[^`]+\.json)`: commit", PAGE.read_text(), re.MULTILINE)
    return ROOT / found[0] if found else None


def _cli() -> Any:
    spec = importlib.util.spec_from_file_location("benchmarks_report_cli", BENCH / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(seconds: list[float], **info: Any) -> dict[str, Any]:
    """One pytest-benchmark entry whose median, mean and minimum differ in general."""
    name = "test_" + "-".join(str(v) for v in info.values())
    stats = {
        "median": statistics.median(seconds),
        "mean": statistics.fmean(seconds),
        "min": min(seconds),
        "max": max(seconds),
        "rounds": len(seconds),
        "data": list(seconds),
    }
    return {"name": name, "fullname": f"synthetic::{name}", "extra_info": info, "stats": stats}


def _json(benchmarks: list[dict[str, Any]], **machine: Any) -> dict[str, Any]:
    info = {"cpu_count": 2, "cpu_model": "Test CPU", "torch": "0.0", "torch_threads": 2}
    return {
        "machine_info": {**info, **machine},
        "datetime": "2026-11-23T12:00:00+00:00",
        "benchmarks": benchmarks,
    }


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def _targets(page: str) -> dict[str, tuple[str, str, str]]:
    """The first targets table of ``page``: row name → (goal, measured, met)."""
    block = page.split("### Targets of issue 7\n\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip("| ").split(" | ") for line in block.splitlines()[2:]]
    return {name: (goal, measured, met) for name, goal, measured, met in rows}


def _matching(data: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    """The raw benchmarks of ``data`` whose ``extra_info`` has the fields of ``match``."""
    return [
        b for b in data["benchmarks"] if all(b["extra_info"].get(k) == v for k, v in match.items())
    ]


def _raw_median(data: dict[str, Any], **match: Any) -> float:
    (bench,) = _matching(data, **match)
    return bench["stats"]["median"]


def _render_edited(paths: list[Path], main: dict[str, Any], tmp_path: Path) -> str:
    """The page of the committed runs with the first replaced by ``main`` (named as before)."""
    edited = _write(tmp_path / paths[0].name, main)
    page = render(load([edited, *paths[1:]]), revisions=_committed_revisions())
    return page.replace(f"- `{edited.name}`:", f"- `{paths[0].relative_to(ROOT)}`:", 1)


@pytest.fixture(scope="module")
def committed() -> tuple[list[Path], list[dict[str, Any]], str]:
    """The committed runs (the first is the main suite's), their raw JSON and their page."""
    paths = _committed_runs()
    page = render(load(paths), revisions=_committed_revisions())
    return paths, [json.loads(p.read_text()) for p in paths], page


# ---------------------------------------------------------------- the committed page


def test_committed_page_is_rendered_from_its_json(committed):
    """docs/benchmarks.md is what report.py makes of the runs it lists (no hand edits)."""
    _, _, page = committed
    assert page == PAGE.read_text(), (
        "docs/benchmarks.md is out of date: regenerate it with `python benchmarks/report.py "
        + " ".join(str(p.relative_to(ROOT)) for p in _committed_runs())
        + (
            f" --revisions {_committed_revisions().relative_to(ROOT)}"
            if _committed_revisions()
            else ""
        )
        + "`"
    )


def test_retrieve_speedup_is_the_ratio_of_the_raw_medians(committed):
    _, (main, *_), page = committed
    official = _raw_median(main, impl="official", **K4)
    fast = _raw_median(main, impl="fast", **K4)
    speedup = official / fast
    (info,) = [b["extra_info"] for b in _matching(main, impl="fast", **K4)]
    sizes = " / ".join(f"{info[f'support_{k}']:.0f}" for k in ("min", "median", "max"))
    row = (
        f"| 4 | 768 | float32 | {sizes} | `retrieve` | {ms(official)} | {ms(fast)} "
        f"| **{speedup:.1f}×** |"
    )
    assert row in page.splitlines()
    assert _targets(page)[RETRIEVE_SEPARATE][1] == f"{speedup:.2f}× (ratio of the medians)"


def test_paired_rows_show_the_recorded_median_of_ratios(committed):
    _, (main, *_), page = committed
    targets = _targets(page)
    for kernel, name in (
        ("sparsemax_paired", 'sparsemax: `k="auto"` vs official full sort'),
        ("retrieve_paired", "`retrieve`, 4 layers, vs official path (D = 768)"),
    ):
        (bench,) = _matching(main, kernel=kernel)
        row = f"{name}, paths alternating ({bench['stats']['rounds']} rounds)"
        value = bench["extra_info"]["paired_ratio"]
        assert targets[row][1] == f"{value:.2f}× (median of the per-round ratios)"


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_targets_met_column_agrees_with_the_measured_values(committed):
    _, _, page = committed
    targets = _targets(page)
    assert len(targets) >= 5
    for name, (goal, measured, met) in targets.items():
        assert met in ("yes", "**no**"), name
        if goal.startswith("≥"):
            value, target = _number(measured.split("×")[0]), _number(goal[2:].rstrip("×"))
            holds = value >= target
        elif goal.startswith("≤"):
            value, target = _number(measured.split(" %")[0]), _number(goal[2:].rstrip(" %"))
            holds = value <= target
        else:
            assert goal == "flat in N with chunking (±25 %)", name
            low, high = map(_number, re.search(r"([\d,]+)–([\d,]+) MiB", measured).groups())
            value, target, holds = high / low, 1.25, high <= 1.25 * low
        if abs(value - target) < 0.01:  # decided before rounding: either reading is fair
            continue
        assert (met == "yes") == holds, (name, measured, met)


def test_header_lines_come_from_machine_info_and_datetime(committed):
    paths, raws, page = committed
    lines = [line for line in page.splitlines() if line.startswith("- `benchmarks/runs/")]
    assert len(lines) == len(paths)
    for line, path, raw in zip(lines, paths, raws, strict=True):
        info = raw["machine_info"]
        assert line.startswith(f"- `{path.relative_to(ROOT)}`: {raw['datetime'][:10]}, ")
        assert f"{info['cpu_count']}-core CPU ({info['cpu_model']})" in line
        assert f"torch {info['torch']} with {info['torch_threads']} threads" in line
        assert f"the suite took {info['suite_seconds'] / 60:.1f} min" in line
        if info.get("selected"):
            assert f'(cases selected with `-k "{info["selected"]}"`).' in line


def test_intro_claims_about_rounds_hold(committed):
    """The page's range of rounds per case is the JSON's, with one round for the official
    path at K = 8 and 16."""
    _, raws, page = committed
    rounds = [b["stats"]["rounds"] for raw in raws for b in raw["benchmarks"]]
    assert f"pedantic mode, {min(rounds)}–{max(rounds)} rounds per case" in page
    main = raws[0]
    for shots in (8, 16):  # where the run has them
        for bench in _matching(main, **{**K4, "shots": shots, "impl": "official"}):
            assert bench["stats"]["rounds"] == 1


# ---------------------------------------------------------------- missing and unknown cases


def test_a_missing_case_leaves_its_rows_out(committed, tmp_path):
    paths, (main, *_), page = committed
    edited = copy.deepcopy(main)
    (gone,) = _matching(edited, impl="fast", **K4)
    edited["benchmarks"].remove(gone)
    assert len(edited["benchmarks"]) == len(main["benchmarks"]) - 1
    new = _render_edited(paths, edited, tmp_path)
    assert RETRIEVE_SEPARATE in _targets(page)
    assert RETRIEVE_SEPARATE not in _targets(new)
    assert "`retrieve`, 4 layers, vs official path (D = 768), paths alternating" in new
    assert not any(
        line.startswith("| 4 | 768 | float32 |") and "| `retrieve` |" in line
        for line in new.split("\n")
    )
    assert "| `retrieve`, `chunk_size=256` |" in new  # its own case
    assert "The 4× target (`retrieve`, K = 4)" in page
    assert "The 4× target (`retrieve`, K = 4)" not in new  # the note needs the separate case


def test_a_missing_pipeline_case_reads_not_run(committed, tmp_path):
    paths, (main, *_), page = committed
    edited = copy.deepcopy(main)
    edited["benchmarks"] = [
        b for b in edited["benchmarks"] if b["extra_info"]["kernel"] != "pipeline"
    ]
    new = _render_edited(paths, edited, tmp_path)
    heading = "### One full prediction (ViT-L/14-336, 518 px, K = 4)"
    assert new.split(heading)[1].split("###")[0].rstrip().endswith("`).\n\nNot run.")
    name = "retrieval share of one prediction (ViT-L, 518 px)"
    assert (name in _targets(page)) == any(_matching(main, kernel="pipeline"))
    assert name not in _targets(new)


def test_an_unknown_kernel_is_listed_under_other_cases(committed, tmp_path):
    """A case no section knows (e.g. a new bench_*.py) is listed with its median, and the
    rest of the page is unchanged."""
    paths, (main, *_), page = committed
    edited = copy.deepcopy(main)
    edited["benchmarks"].append(_bench([0.1, 0.2, 0.3], kernel="mystery", impl="x", device="cpu"))
    new = _render_edited(paths, edited, tmp_path)
    row = "| mystery | impl=x | – | 3 | 200 |"
    assert row in new
    assert row not in page
    before, after = new.split("### Other cases\n\n", 1)
    assert before + "## GPU" + after.split("\n\n## GPU", 1)[1] == page


_NO_INFO = {"name": "test_x", "stats": {"median": 1.0, "rounds": 1}}
_NO_STATS = {"name": "test_y", "extra_info": {"kernel": "retrieve", "device": "cpu"}}


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ["does not exist"]),
        ("{not json", ["is not valid JSON"]),
        (json.dumps({"benchmarks": []}), ["not pytest-benchmark JSON", "machine_info, datetime"]),
        (json.dumps(_json([_NO_INFO])), ["'test_x'", "extra_info.kernel, extra_info.device"]),
        (json.dumps(_json([_NO_STATS])), ["'test_y'", "stats.median, stats.rounds"]),
    ],
    ids=["missing-file", "not-json", "not-pytest-benchmark", "no-extra-info", "no-stats"],
)
def test_bad_json_raises_a_clear_error(tmp_path, content, fragments):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
        load([path])
    for fragment in fragments:
        assert fragment in str(error.value)


def test_cli_reports_a_bad_file_as_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _cli().main([str(tmp_path / "absent.json"), "--out", str(tmp_path / "page.md")])
    assert stop.value.code == 2
    assert "absent.json' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "page.md").exists()


# ---------------------------------------------------------------- synthetic runs


def test_tables_show_medians_not_means(tmp_path):
    official, fast = [3.0, 3.1, 9.0], [0.50, 0.52, 0.55, 0.60, 3.00]
    data = _json([_bench(official, impl="official", **K4), _bench(fast, impl="fast", **K4)])
    page = render(load([_write(tmp_path / "bench.json", data)]))
    assert "| 4 | 768 | float32 | – | `retrieve` | 3,100 | 550 | **5.6×** |" in page
    assert _targets(page) == {RETRIEVE_SEPARATE: ("≥ 4×", "5.64× (ratio of the medians)", "yes")}
    by_mean = statistics.fmean(official) / statistics.fmean(fast)
    assert f"{by_mean:.1f}×" != "5.6×"
    assert f"{by_mean:.1f}×" not in page


@given(
    official=st.lists(st.floats(1e-3, 10.0), min_size=1, max_size=5),
    fast=st.lists(st.floats(1e-3, 10.0), min_size=1, max_size=5),
)
def test_speedup_and_verdict_follow_the_medians(tmp_path_factory, official, fast):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    data = _json([_bench(official, impl="official", **K4), _bench(fast, impl="fast", **K4)])
    page = render(load([_write(path, data)]))
    speedup = statistics.median(official) / statistics.median(fast)
    row = _targets(page)[RETRIEVE_SEPARATE]
    assert row == (
        "≥ 4×",
        f"{speedup:.2f}× (ratio of the medians)",
        "yes" if speedup >= 4 else "**no**",
    )
    times = f"| {ms(statistics.median(official))} | {ms(statistics.median(fast))} |"
    assert f"{times} **{speedup:.1f}×** |" in page


def test_header_of_a_synthetic_run(tmp_path):
    machine = {
        "cpu_count": 96,
        "cpu_model": "Test CPU 9000",
        "torch": "9.9.9",
        "torch_threads": 48,
        "cuda_device": "Test GPU",
        "load_average_start": 0.31,
        "load_average_end": 2.66,
        "suite_seconds": 90.0,
    }
    data = _json([_bench([1.0], impl="official", **K4)], **machine)
    data["datetime"] = "2031-02-03T04:05:06+00:00"
    bare = _json([_bench([1.0], impl="official", **K4)], cpu_model=None, cpu={"brand_raw": "Raw"})
    page = render(load([_write(tmp_path / "a.json", data), _write(tmp_path / "b.json", bare)]))
    assert (
        "- `a.json`: 2031-02-03, 96-core CPU (Test CPU 9000), torch 9.9.9 with 48 threads, "
        "GPU: Test GPU; 1-minute load average 0.3 at the start and 2.7 at the end of the run; "
        "the suite took 1.5 min.\n"
        "- `b.json`: 2026-11-23, 2-core CPU (Raw), torch 0.0 with 2 threads, GPU: none.\n"
    ) in page


def test_header_names_a_selection_of_cases(tmp_path):
    data = _json([], suite_seconds=60.0, selected="not K16")
    page = render(load([_write(tmp_path / "a.json", data)]))
    assert 'the suite took 1.0 min (cases selected with `-k "not K16"`).' in page


def test_gpu_cases_get_their_own_section_after_the_cpu(tmp_path):
    cases = [
        _bench([1.0], impl="official", **{**K4, "device": device}) for device in ("cuda", "cpu")
    ]
    page = render(load([_write(tmp_path / "bench.json", _json(cases))]))
    assert "GPU figures are in the CUDA sections below." in page
    assert "No GPU was available" not in page
    assert page.index("## Results: CPU") < page.index("## Results: GPU (cuda)")
    assert f"![retrieve time vs K]({plot_names('cuda')[2]})" in page


def test_empty_run_has_no_results_section(tmp_path):
    page = render(load([_write(tmp_path / "bench.json", _json([]))]))
    assert "## Results" not in page
    assert "**No GPU was available**" in page
    assert page.endswith(
        "cost depends on the support is measured by the support sweep and the stage table above.\n"
    )


# ---------------------------------------------------------------- formatting


def test_number_formats():
    assert [ms(s) for s in (None, 2.5, 0.1, 0.0123, 0.00123)] == [
        "–",
        "2,500",
        "100",
        "12.3",
        "1.23",
    ]
    assert [ratio(3.0, 0.5), ratio(None, 1.0), ratio(1.0, None), ratio(1.0, 3.0)] == [
        "**6.0×**",
        "–",
        "–",
        "**0.3×**",
    ]
    assert [mib(None), mib(1234.4), mib(15.6)] == ["–", "1,234", "16"]
    assert (
        table(("a", "b"), [(1, "x"), (2, "y")]) == "| a | b |\n| --- | --- |\n| 1 | x |\n| 2 | y |"
    )
    assert support(Case({"support_median": 29.0, "support_max": 35.0}, 1.0, 1, 0)) == "29 (35)"
    assert support(Case({}, 1.0, 1, 0)) == "–"
    assert support(None) == "–"
    full = {"support_min": 6.0, "support_median": 152.0, "support_max": 224.0}
    assert support_range(Case(full, 1.0, 1, 0)) == "6 / 152 / 224"
    assert support_range(Case({"support_median": 29.0, "support_max": 35.0}, 1, 1, 0)) == "29 (35)"
    assert support_range(None) == "–"


# ---------------------------------------------------------------- plots (matplotlib)


def test_cli_writes_the_page_and_its_plots_next_to_out(committed, tmp_path):
    pytest.importorskip("matplotlib")
    paths, _, page = committed
    out = tmp_path / "site" / "benchmarks.md"
    revisions = _committed_revisions()
    extra = ["--revisions", str(revisions)] if revisions else []
    _cli().main([*map(str, paths), "--out", str(out), *extra])
    assert out.read_text() == page
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert linked == plot_names("cpu")
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, *linked])
    for name in linked:
        assert (out.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- issue 19 sections


def _sweep(case: str, fast: float, floor: float, support: tuple, **extra: Any) -> dict:
    lo, mid, hi = support
    info = {
        "kernel": "support_sweep",
        "impl": "pair",
        "case": case,
        "device": "cpu",
        "rounds": 5,
        "fast_s": fast,
        "floor_s": floor,
        "fast/floor": fast / floor,
        "fast/floor_min": fast / floor - 0.1,
        "fast/floor_max": fast / floor + 0.1,
        "support_min": lo,
        "support_median": mid,
        "support_max": hi,
        **extra,
    }
    return _bench([fast + floor] * 5, **info)


def test_sweep_rows_are_sorted_by_support_and_the_target_follows_the_worst_ratio(tmp_path):
    default = {"default": True, "official_s": 3.0, "official/fast": 3.0, "official/fast_min": 2.5}
    default |= {"official/fast_max": 3.5, "official/floor": 5.0, "official/floor_min": 4.5}
    default |= {"official/floor_max": 5.5}
    cases = [
        _sweep("s150", 1.0, 0.6, (6.0, 152.0, 224.0), **default),
        _sweep("s10", 0.62, 0.5, (4.0, 11.0, 144.0)),
    ]
    page = render(load([_write(tmp_path / "bench.json", _json(cases))]))
    section = page.split("### Realistic supports")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `s")]
    assert rows[0] == "| `s10` | 4 / 11 / 144 | 500 | 620 | 1.24× (1.14–1.34) | 5 |"
    assert rows[1].startswith("| `s150` (default) | 6 / 152 / 224 | 600 | 1,000 | 1.67×")
    assert "official / `retrieve` = 3.00× (2.50–3.50)" in section
    assert "official / floor = 5.00× (4.50–5.50)" in section
    assert (
        "within 1.3× of the floor across the sweep: **not met** (largest median ratio 1.67×)"
        in (section)
    )
    assert "Within 1.3×: `s10`. Above: `s150` (1.67×); the stage table below" in section
    met = render(load([_write(tmp_path / "met.json", _json(cases[1:]))]))
    assert "across the sweep: met (largest median ratio 1.24×)" in met


def test_stage_table_breaks_the_screen_down_where_it_paid_off(tmp_path):
    stages = {"gemm": 0.5, "penalty": 0.02, "screen": 0.2, "sort": 0.05, "widen": 0.1}
    stages |= {"weights": 0.03, "gather_sum": 0.01}
    parts = {"screen_maxima": 0.02, "screen_bound": 0.03, "screen_select": 0.12}
    parts |= {"screen_tighten": 0.03}
    info = {f"stage_{k}_s": v for k, v in (stages | parts).items()}
    info |= {"screened": 1.0, "first_width": 700, "support_width": 224}
    case = _bench([1.0], kernel="stages", impl="stages", case="s150", device="cpu", **info)
    page = render(load([_write(tmp_path / "bench.json", _json([case]))]))
    section = page.split("### Where `retrieve`'s time goes")[1].split("###")[0]
    lines = section.splitlines()
    screen = lines.index("| screen (block maxima; or the top-64 start) | 200 |")
    assert lines[screen + 3] == (
        "| ↳ screen: block compared with the bound, entries kept compacted | 120 |"
    )
    assert f"| **sum of the stages** | **{ms(sum(stages.values()))}** |" in section  # not parts
    assert (
        "the screen's largest part: block compared with the bound, entries kept compacted, "
        "120 ms (60% of its parts)" in section
    )


def test_stage_table_lists_every_stage_and_their_sum(tmp_path):
    stages = {"gemm": 0.5, "penalty": 0.02, "screen": 0.2, "sort": 0.05, "widen": 0.1}
    stages |= {"weights": 0.03, "gather_sum": 0.01}
    info = {f"stage_{k}_s": v for k, v in stages.items()}
    info |= {"screened": 0.5, "first_width": 700, "support_width": 224}
    case = _bench([1.0], kernel="stages", impl="stages", case="s150", device="cpu", **info)
    page = render(load([_write(tmp_path / "bench.json", _json([case]))]))
    section = page.split("### Where `retrieve`'s time goes")[1].split("###")[0]
    assert "| similarity GEMM | 500 |" in section
    assert "| screen (block maxima; or the top-64 start) | 200 |" in section
    assert f"| **sum of the stages** | **{ms(sum(stages.values()))}** |" in section
    assert "| layers screened | 50% |" in section
    assert "| support width | 224 |" in section
    assert (
        "- `s150`: the stages beyond the GEMM take 410 ms, 0.82× the GEMM's 500 ms; the largest "
        "is the screen (block maxima; or the top-64 start), 200 ms (49%); the screen narrowed "
        "50% of the layers. GEMM, penalty and gather-and-sum alone, the stages that do not "
        "depend on how the support is found: 1.06× the GEMM." in section  # (500 + 20 + 10) / 500
    )


def test_end_to_end_row_gives_speedup_and_achieved_flops(tmp_path):
    info = {
        "kernel": "end_to_end", "impl": "pair", "model": "narrow", "mode": "fine_tuned",
        "device": "cpu", "depth": 24, "width": 256, "dim": 256, "rounds": 2,
        "baseline_s": 8.0, "fast_s": 4.0, "official/fast": 2.0, "official/fast_min": 1.8,
        "official/fast_max": 2.2, "gemm_flops": 60e9, "fast_flop": 100e9,
        "official_flop": 160e9, "support_min": 19.0, "support_median": 36.0,
        "support_max": 60.0,
    }  # fmt: skip
    page = render(load([_write(tmp_path / "bench.json", _json([_bench([12.0], **info)]))]))
    row = (
        "| narrow (24×256, D = 256) | fine-tuned | 19 / 36 / 60 | 8.00 | 4.00 | 2.00× (1.80–2.20) "
        "| 20 / 25 / 60 | 160 / 100 | 2 |"
    )
    assert row in page
    assert "ViT-L/14-336 end to end: not run here (opt-in: `--vit-l`" in page


def test_gpu_section_says_not_measured_without_gpu_cases(tmp_path):
    page = render(load([_write(tmp_path / "bench.json", _json([]))]))
    section = page.split("## GPU\n\n")[1].split("\n## ")[0]
    assert section.count("| not measured |") == 5
    for k in (1, 2, 4):
        assert f"images/s, ViT-L/14-336, 518 px, batch 16, K = {k} | not measured |" in section
    assert "every GPU figure (autocast parity, batched images per second" in page
    gpu = _bench([0.8], kernel="gpu_throughput", impl="batched", shots=4, images=16, device="cuda")
    measured = render(load([_write(tmp_path / "gpu.json", _json([gpu]))]))
    assert "| images/s, ViT-L/14-336, 518 px, batch 16, K = 4 (cuda) | 20.0 |" in measured
    assert "not measured |" not in measured.split("## GPU")[1].split("## Regression")[0]


def test_regression_section_reads_the_compare_revisions_json(tmp_path):
    data = {
        "old": "b04bfa3", "new": "abc1234", "date": "2026-12-02", "cpu_count": 2,
        "load_average_start": 7.0, "load_average_end": 8.0,
        "results": [{"case": "retrieve", "rounds": 5, "old_s": 1.2, "new_s": 1.0,
                     "ratio": 0.8, "ratio_min": 0.7, "ratio_max": 0.95, "identical": True}],
    }  # fmt: skip
    runs = load([_write(tmp_path / "bench.json", _json([]))])
    assert "Regression check: not measured" in render(runs)
    page = render(runs, revisions=_write(tmp_path / "revisions.json", data))
    section = page.split("## Regression check\n\n")[1]
    assert section.startswith("`revisions.json`: commit `b04bfa3` (before the refactor")
    assert "| 5 | 1,200 | 1,000 | 0.80 (0.70–0.95) | yes |" in section
    with pytest.raises(ValueError, match="revisions JSON"):
        render(runs, revisions=tmp_path / "absent.json")
