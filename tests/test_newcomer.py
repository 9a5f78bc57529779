"""What a newcomer meets first (issue 24, part 6): the progress ETA, one-line warnings shown
once, "complete" against each probe's planned cells, the HTML report's order and paths, and
verdicts that only claim what their figure draws."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from test_study import SHORT, WIDTHS, N, make_cube

from ckpt_analyzer.cli import main
from ckpt_analyzer.cli.progress import _eta, _probe_line, _progress
from ckpt_analyzer.cube import Cube
from ckpt_analyzer.cube.plan import PLAN_ATTR, add_plan, planned_cells
from ckpt_analyzer.probes.base import Metric, Outputs
from ckpt_analyzer.report.status import coverage, is_complete
from ckpt_analyzer.study import format_study, load_study

WARNER = '''
import warnings
from dataclasses import dataclass

import numpy as np

from ckpt_analyzer.probes.base import Metric, Outputs, Probe


class Warner(Probe):
    name = "warner"
    version = "1"
    description = "warns once when prepared and at every checkpoint"

    @dataclass(frozen=True)
    class Config:
        pass

    def prepare(self, ctx):
        warnings.warn("warner: prepared on a small set")
        return {}

    def outputs(self):
        return Outputs(coords={}, metrics={"one": Metric(dims=())})

    def __call__(self, model, ctx):
        warnings.warn("warner: the same caveat\\nat every checkpoint")
        return {"one": np.array(1.0)}
'''


# ----------------------------------------------------------------------------- progress


def test_eta_from_the_mean_checkpoint_time() -> None:
    # a 2-minute checkpoint: rich's own estimate (a 30 s window) has no speed and shows -:--:--
    assert _eta(80, 0, 0.0, None, 60.0) == "after the 1st"
    assert _eta(80, 1, 0.0, 120.0, 120.0) == "2:38:00"  # 79 more of 120 s each
    assert _eta(80, 1, 0.0, 120.0, 130.0) == "2:37:50"  # counts down between checkpoints
    assert _eta(80, 2, 0.0, 200.0, 200.0) == "2:10:00"  # the mean over both: 100 s
    assert _eta(3, 3, 0.0, 30.0, 40.0) == "0:00:00"
    assert _probe_line({"sharpness": 240.0, "metrics": 0.4}, {"sharpness": 2, "metrics": 2}) \
        == "sharpness 0:02:00, metrics 0.2 s"


def test_progress_display_shows_the_eta_and_each_probes_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rich")
    import io
    import time
    from types import SimpleNamespace

    from rich.console import Console

    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    prog, report = _progress(True)
    report("start", 5)
    now[0] += 120.0  # the first checkpoint took 2 minutes
    report("seconds", {"sharpness": 110.0, "metrics": 0.5})
    report("advance", SimpleNamespace(width=8, epoch=0))
    now[0] += 30.0
    buf = io.StringIO()
    Console(file=buf, width=200).print(prog.make_tasks_table(prog.tasks))
    line = buf.getvalue()
    assert "w8 e0" in line and "1/5" in line
    assert "eta 0:07:30" in line and "-:--:--" not in line  # 4 x 120 s - 30 s
    assert "sharpness 0:01:50, metrics 0.5 s" in line


def test_warnings_are_one_line_each_and_shown_once(digits_run: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "warner.py"
    plugin.write_text(WARNER)
    res = CliRunner().invoke(main, ["run", str(digits_run), "-o", str(tmp_path / "c.h5"),
                                    "--plugin", str(plugin), "--probe", "warner",
                                    "--epochs", "0:2", "-q"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines.count("warning: warner: prepared on a small set") == 1
    # raised at each of the 6 checkpoints (in the worker): one line, once
    assert lines.count("warning: warner: the same caveat at every checkpoint") == 1
    assert "UserWarning" not in res.output and "warnings.warn" not in res.output
    assert "warner.py" not in res.output


# ----------------------------------------------------------------------------- complete


def _add_probe(path: Path, name: str, epochs: list[int], planned: list[int] | None) -> None:
    with Cube(path) as cube:
        cube.begin_probe(name, "1", {}, 0, Outputs(coords={}, metrics={"v": Metric(())}), {})
        if planned is not None:
            cube.set_root({PLAN_ATTR: add_plan(cube.root().get(PLAN_ATTR), name, planned,
                                               WIDTHS)})
        for e in epochs:
            for w in WIDTHS:
                cube.record(name, e, w, {"v": np.array(1.0)})
        cube.materialize()


def test_plan_is_a_union_of_rectangles_and_overwrite_replaces() -> None:
    text = add_plan(None, "sharpness", [0, 8], [1, 2])
    text = add_plan(text, "sharpness", [300], [2])
    assert planned_cells({PLAN_ATTR: text}, "sharpness") == {(0, 1), (8, 1), (0, 2), (8, 2),
                                                             (300, 2)}
    assert add_plan(text, "sharpness", [300], [2]) == text  # a re-run adds nothing
    again = add_plan(text, "sharpness", [5], [1], replace=True)
    assert planned_cells({PLAN_ATTR: again}, "sharpness") == {(5, 1)}
    assert planned_cells({PLAN_ATTR: text}, "metrics") is None  # not recorded: the whole grid
    assert planned_cells({}, "sharpness") is None


def test_a_probe_restricted_by_design_is_complete(tmp_path: Path) -> None:
    last = N - 1
    c = make_cube(tmp_path / "n0.2-s0.h5", 0)  # sharpness, interpolation: last epoch only
    study = load_study([c], **SHORT)
    assert study["runs"][0]["complete"] is False  # no plan recorded (an older cube): partial
    with Cube(c) as cube:  # what the runner records at begin_probe
        plan = cube.root().get(PLAN_ATTR)
        for p in ("metrics", "spectrum", "hessian", "normalization", "landscape",
                  "weights_spectrum"):
            plan = add_plan(plan, p, range(N), WIDTHS)
        for p in ("sharpness", "interpolation"):
            plan = add_plan(plan, p, [last], WIDTHS)
        cube.set_root({PLAN_ATTR: plan})
        cube.materialize()
    cov = coverage(c)
    assert cov["sharpness"] == {"done": 3, "total": N * 3, "planned": 3, "planned_done": 3}
    assert is_complete(cov)
    study = load_study([c], **SHORT)
    assert study["runs"][0]["complete"] is True
    assert not any("incomplete" in n for n in study["notes"])
    assert "partial" not in format_study(study)
    # a planned cell missing is partial, with the planned counts in the note
    _add_probe(c, "extra", [0], [0, 1])
    study = load_study([c], **SHORT)
    assert study["runs"][0]["complete"] is False
    assert any("is incomplete" in n and f"of {sum(v['planned'] for v in coverage(c).values())}"
               in n for n in study["notes"])


def test_the_runner_records_the_plan_of_each_probe(digits_run: Path, tmp_path: Path) -> None:
    cube = tmp_path / "c.h5"
    plugin = tmp_path / "warner.py"
    plugin.write_text(WARNER)
    for extra in ([], ["--epochs", "0,4"]):
        res = CliRunner().invoke(main, ["run", str(digits_run), "-o", str(cube), "--plugin",
                                        str(plugin), "--probe", "warner" if extra else "metrics",
                                        *extra, "-q"])
        assert res.exit_code == 0, res.output
    import h5py

    with h5py.File(cube, "r") as f:
        plan = json.loads(f.attrs[PLAN_ATTR])
    assert plan["warner"] == [{"epochs": [0, 4], "widths": [1, 4]}]
    assert plan["metrics"] == [{"epochs": [0, 1, 2, 3, 4], "widths": [1, 4]}]
    cov = coverage(cube)
    assert cov["warner"]["planned"] == cov["warner"]["planned_done"] == 4
    assert cov["warner"]["total"] == 10 and is_complete(cov)


# ----------------------------------------------------------------------------- HTML report


def _study_cubes(root: Path) -> list[Path]:
    cubes = []
    for s in (0, 1, 2):
        c = make_cube(root / f"n0.2-s{s}.h5", s)
        with Cube(c) as cube:
            plan = None
            for p in ("metrics", "spectrum", "hessian", "normalization", "landscape",
                      "weights_spectrum"):
                plan = add_plan(plan, p, range(N), WIDTHS)
            for p in ("sharpness", "interpolation"):
                plan = add_plan(plan, p, [N - 1], WIDTHS)
            cube.set_root({PLAN_ATTR: plan})
            cube.materialize()
        cubes.append(c)
    return cubes


def test_html_starts_with_results_folds_configs_and_hides_machine_paths(
        tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    cubes = _study_cubes(tmp_path / "cubes")
    out = tmp_path / "cubes" / "report.html"
    res = CliRunner().invoke(main, ["report", *map(str, cubes), "--patience", "10",
                                    "--window", "2", "--html", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text(encoding="utf-8")
    folded = page.index("<details")
    assert page.index("<h2>Events") < page.index("<h2>Figures") < folded
    assert page.index("Probe configs") > folded and page.index("<h2>Runs") > folded
    assert page.index("Run configuration") > folded and "</details>" in page[folded:]
    assert "3 of 3 complete" in page[:folded]
    assert str(tmp_path) not in page and str(tmp_path.resolve()) not in page
    assert "/runs/" not in page  # the cubes' absolute source folders
    assert "<td class='l'>n0.2-s1.h5</td>" not in page  # a cell: 'yes', not 'partial'
    runs = page[page.index("<h2>Runs"):]
    assert ">n0.2-s1.h5<" in runs and ">runs/noise0.2-seed1<" in runs
    assert ">partial<" not in runs and runs.count(">yes<") == 3


# ----------------------------------------------------------------------------- verdicts


def test_spectrum_verdict_judges_the_width_its_figure_draws() -> None:
    from ckpt_analyzer.study.html import verdict_spectrum

    def study(found: list[int]) -> dict[str, Any]:
        return {"groups": [{"noise": "0.2", "runs": [0, 1, 2], "per_width": [
            {"width": w, "T_R_peak": {"n": n}} for w, n in zip((1, 2, 4), found)]}]}

    state, text = verdict_spectrum(study([3, 3, 0]))  # most widths, but not the drawn one
    assert state == "not" and "at width 4 (drawn)" in text and "found in 0 of 3 runs" in text
    state, text = verdict_spectrum(study([0, 0, 2]))
    assert state == "shown" and "found in 2 of 3 runs" in text


def test_hessian_and_sharpness_figures_draw_what_their_verdicts_compare(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from ckpt_analyzer.plot import PlotOptions
    from ckpt_analyzer.study.html import verdict_hessian, verdict_sharpness
    from ckpt_analyzer.study.probe_figures import draw_hessian, draw_sharpness

    study = load_study(_study_cubes(tmp_path), **SHORT)
    labels = [ln.get_label() for ln in draw_hessian(study, PlotOptions()).axes[0].get_lines()]
    assert "test error peak w = 2 (2/3 runs)" in labels  # the verdict's other half
    assert verdict_hessian(study)[0] == "shown"
    fig = draw_sharpness(study, PlotOptions())
    for ax in fig.axes:
        assert "interpolation threshold w = 2 (3/3 runs)" in [ln.get_label()
                                                              for ln in ax.get_lines()]
    assert verdict_sharpness(study)[0] == "shown"
