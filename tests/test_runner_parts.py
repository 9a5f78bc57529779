"""The runner's parts (issue 23): plan (one Context builder, one executor rule, probes built and
prepared once), executors that keep their workers across rounds, the writer's group commit."""

from __future__ import annotations

import ast
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from ckpt_analyzer.checkpoints import CheckpointRef, discover, read_state_dict
from ckpt_analyzer.errors import CheckpointError, UsageError
from ckpt_analyzer.executors.base import executor_kind
from ckpt_analyzer.executors.work import Outcome, Plan, Task, Worker
from ckpt_analyzer.probes.metrics import MetricsProbe
from ckpt_analyzer.probes.spectrum import SpectrumProbe
from ckpt_analyzer.runner import Runner
from ckpt_analyzer.runner.plan import auto_workers
from ckpt_analyzer.runner.summary import RunSummary
from ckpt_analyzer.runner.writer import Writer

RUNNER = Path(__file__).resolve().parent.parent / "ckpt_analyzer" / "runner"


def test_no_function_in_runner_is_over_80_lines() -> None:
    long = []
    for f in sorted(RUNNER.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 80:
                    long.append(f"{f.name}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


@pytest.mark.parametrize("executor, workers, devices, ray, kind", [
    (None, None, None, None, "local"), (None, 2, None, None, "pool"),
    (None, None, ["cuda:0"], None, "pool"), (None, None, None, "auto", "ray"),
    ("local", 1, None, None, "local"), ("pool", None, None, None, "pool"),
    ("ray", 3, None, None, "ray"), (None, "auto", None, None, "auto"),
])
def test_one_rule_for_the_executor(executor: str | None, workers: Any, devices: Any, ray: Any,
                                   kind: str) -> None:
    assert executor_kind(executor, workers, devices, ray) == kind


@pytest.mark.parametrize("executor, workers, why", [
    ("local", 2, "--executor local measures in this process"), (None, 0, "at least 1"),
    ("pool", "auto", "--workers auto chooses"),
])
def test_the_rule_refuses_contradictions(executor: str, workers: Any, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        executor_kind(executor, workers)


def test_runner_and_cli_agree_on_local_with_workers(digits_run: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ckpt_analyzer.cli import main

    with pytest.raises(UsageError, match="--executor local measures in this process"):
        Runner(run_dir=str(digits_run), probes=["metrics"], executor="local", workers=2,
               output=str(tmp_path / "a.h5")).run()
    res = CliRunner().invoke(main, ["run", str(digits_run), "--probe", "metrics", "--executor",
                                    "local", "--workers", "2", "-o", str(tmp_path / "b.h5")])
    assert res.exit_code == 2 and "--executor local measures in this process" in res.output


def test_workers_auto_rule() -> None:
    assert auto_workers(params=10_000, checkpoints=100, cores=4) == 4
    assert auto_workers(params=10_000, checkpoints=100, cores=2) is None  # threads win on 2
    assert auto_workers(params=10_000, checkpoints=100, cores=1) is None
    assert auto_workers(params=10_000, checkpoints=20, cores=4) == 2
    assert auto_workers(params=10_000, checkpoints=10, cores=4) is None  # start-up dominates
    assert auto_workers(params=11_000_000, checkpoints=10_000, cores=16) is None
    assert auto_workers(params=10_000, checkpoints=1000, cores=16) == 16


class CountingMetrics(MetricsProbe):
    prepared = 0

    def prepare(self, ctx: Any) -> Any:
        type(self).prepared += 1
        return super().prepare(ctx)


def test_probes_by_instance_and_class_built_and_prepared_once(digits_run: Path,
                                                              tmp_path: Path) -> None:
    CountingMetrics.prepared = 0
    probe = CountingMetrics(MetricsProbe.Config(subsets=("train", "test")))
    out = tmp_path / "a.h5"
    summary = Runner(run_dir=str(digits_run), probes=[probe, SpectrumProbe], output=str(out),
                     settings={"spectrum": {"points": 8, "n": 8}}, batch_size=64,
                     widths=[1], epochs=[0, 4]).run()
    assert not summary.failed and summary.computed == 2
    assert CountingMetrics.prepared == 1  # once per run (not again for the size check)
    with h5py.File(out, "r") as f:
        assert json.loads(f["metrics"].attrs["config"])["subsets"] == ["train", "test"]
        assert json.loads(f["spectrum"].attrs["config"])["points"] == 8
        assert f["metrics/done"][()].sum() == 2 and f["spectrum/done"][()].sum() == 2
    with pytest.raises(UsageError, match="expected a probe name, class or instance"):
        Runner(run_dir=str(digits_run), probes=[42], output=str(tmp_path / "b.h5")).run()


def _foreign(digits_run: Path, out: Path, epochs: tuple[int, ...] = (0, 4)) -> Path:
    from safetensors.torch import save_file

    (out / "w1").mkdir(parents=True)
    for e in epochs:
        state = read_state_dict(digits_run / "w1" / f"e{e:05d}.safetensors")
        save_file({f"module.{k}": v.contiguous() for k, v in state.items()},
                  str(out / "w1" / f"ckpt_{e}.safetensors"))
    return out


def _plan(run_dir: Path, **kw: Any) -> Plan:
    meta = {"arch": "mcnn", "num_classes": 10, "in_channels": 1}
    return Plan(run_dir=str(run_dir), model="mcnn", dataset="digits", widths=(1,),
                epochs=(0, 4), width_meta={1: meta}, **kw)


def test_a_worker_process_strips_module_prefixes_from_first_and_last_states(
        digits_run: Path, tmp_path: Path) -> None:
    """The pool/Ray worker's context (Worker(plan), built as in a worker process) gives the
    model's own keys, like the in-process one: both are Plan.context."""
    import pickle

    foreign = _foreign(digits_run, tmp_path / "foreign")
    first, last = (str(foreign / "w1" / f"ckpt_{e}.safetensors") for e in (0, 4))
    plan = _plan(foreign, probes=pickle.dumps([]), initial={1: first}, final={1: (4, last, None)})
    worker = Worker(plan)
    keys = set(worker.build(1).state_dict())
    init = worker.ctx.initial_state(1)  # type: ignore[misc]
    epoch, fin = worker.ctx.final_state(1)  # type: ignore[misc]
    assert set(init) == keys and set(fin) == keys and epoch == 4
    want = read_state_dict(digits_run / "w1" / "e00004.safetensors")
    assert all(torch.equal(fin[k], want[k]) for k in keys)


def test_a_broken_last_checkpoint_raises_its_recorded_error_everywhere(digits_run: Path,
                                                                       tmp_path: Path) -> None:
    bad = str(tmp_path / "w1" / "ckpt_4.safetensors")
    plan = _plan(tmp_path, final={1: (4, bad, f"{bad}: truncated file")})
    from ckpt_analyzer.checkpoints.run_data import load_run_data

    ctx = plan.context(load_run_data(digits_run, torch.device("cpu")), torch.device("cpu"))
    with pytest.raises(CheckpointError, match="truncated file"):
        ctx.final_state(1)  # type: ignore[misc]


def test_the_pool_keeps_its_workers_across_rounds_and_learns_new_widths(digits_run: Path) -> None:
    """Two rounds (as --follow): width 4 appears only in the second round's plan; the one
    worker started for the first round measures it, with the same numbers as in-process."""
    import pickle

    from ckpt_analyzer.checkpoints.run_data import load_run_data
    from ckpt_analyzer.executors.measure import PreparedProbe
    from ckpt_analyzer.executors.pool import PoolExecutor
    from ckpt_analyzer.runner.plan import Prepared

    refs = {(r.width, r.epoch): r for r in discover(digits_run)}
    meta = {w: dict(refs[(w, 0)].metadata) for w in (1, 4)}
    base = Plan(run_dir=str(digits_run), widths=(1, 4), epochs=(0, 4), batch_size=64,
                width_meta={1: meta[1]}, initial={1: refs[(1, 0)].path},
                final={1: (4, refs[(1, 4)].path, None)})
    data = load_run_data(digits_run, torch.device("cpu"))
    probe = MetricsProbe(MetricsProbe.Config())
    probe.prepare(base.context(data, torch.device("cpu")))
    unit = PreparedProbe(probe, probe.outputs())
    assert Prepared(probe, outputs=unit.outputs).unit() == unit
    plan1 = dataclasses.replace(base, probes=pickle.dumps([unit]))
    plan2 = plan1.grown({**plan1.delta(), "width_meta": meta,
                         "initial": {w: refs[(w, 0)].path for w in (1, 4)},
                         "final": {w: (4, refs[(w, 4)].path, None) for w in (1, 4)}})
    pool = PoolExecutor(1, threads=1)
    got: dict[tuple[int, int], Outcome] = {}
    try:
        for plan, keys in ((plan1, [(1, 0), (1, 4)]), (plan2, [(4, 0), (4, 4)])):
            tasks = [Task(i, refs[k], ("metrics",)) for i, k in enumerate(keys)]
            for batch in pool.run(plan, tasks):
                got.update({(o.task.ref.width, o.task.ref.epoch): o for o in batch})
    finally:
        pool.close()
    assert pool.started == 1 and len(got) == 4
    local = Worker.in_process(plan2, data, torch.device("cpu"), [unit])
    for k, out in got.items():
        assert out.error is None, out.error
        ref = local.run(Task(0, refs[k], ("metrics",))).results
        for m, v in (out.results or {})["metrics"].items():
            assert np.array_equal(v, (ref or {})["metrics"][m], equal_nan=True), (k, m)


class _Cube:
    def __init__(self) -> None:
        self.transactions: list[int] = []
        self.materialized = 0

    def record_many(self, cells: list[Any]) -> None:
        self.transactions.append(len(cells))

    def record_failure(self, *args: Any, **kwargs: Any) -> None:
        pass

    def materialize(self, *args: Any) -> None:
        self.materialized += 1


def _outcomes(n: int, pause: float = 0.0) -> Any:
    for i in range(n):
        if pause:
            time.sleep(pause)
        ref = CheckpointRef(width=1, epoch=i, path=f"e{i}")
        yield [Outcome(Task(i, ref, ("p",)), results={"p": {"x": np.zeros(1)}})]


def test_group_commit_collects_fast_outcomes_and_commits_slow_ones_at_once() -> None:
    cube = _Cube()
    summary = RunSummary(cube="c")
    writer = Writer(cube, summary, None, delay=0.2, max_cells=300)
    writer.consume(_outcomes(1000), [0], [1])  # ~µs each: a transaction per 300 cells
    assert sum(cube.transactions) == 1000 and len(cube.transactions) <= 5, cube.transactions
    assert summary.computed == 1000 and cube.materialized == 1
    slow = _Cube()
    Writer(slow, RunSummary(cube="c"), None, delay=0.01).consume(_outcomes(3, 0.02), [0], [1])
    assert slow.transactions == [1, 1, 1]  # each took longer than the delay: durable at once


def test_workers_auto_measures_a_short_run_in_this_process(digits_run: Path, tmp_path: Path) -> None:
    """10 checkpoints of a tiny model on this machine: too few to pay for worker start-ups."""
    summary = Runner(run_dir=str(digits_run), probes=["metrics"], workers="auto",
                     output=str(tmp_path / "a.h5"), batch_size=64).run()
    assert summary.executor == "local" and summary.computed == 10 and not summary.failed


def test_max_memory_reaches_the_probes_context_in_process_and_in_workers(
        digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-memory SIZE is parsed once (one line for a bad size), lands in the Plan (so pool and
    Ray workers get it) and in every probe's Context; the budget's own effect on batches is
    tested in test_big_model.py."""
    from click.testing import CliRunner

    from ckpt_analyzer.cli import main
    from ckpt_analyzer.runner import plan as plan_mod
    from ckpt_analyzer.selection import parse_size

    assert parse_size("512M") == 512 * 2**20 and parse_size("1.5GiB") == 3 * 2**29
    for bad in ("lots", "0", "-1G"):
        with pytest.raises(UsageError, match="--max-memory"):
            parse_size(bad)
    seen: list[int | None] = []
    real = plan_mod.prepare_probes

    def spy(probes: Any, ctx: Any, *a: Any) -> Any:
        seen.append(ctx.max_memory)
        return real(probes, ctx, *a)

    monkeypatch.setattr("ckpt_analyzer.runner.core.prepare_probes", spy)
    res = CliRunner().invoke(main, ["run", str(digits_run), "--probe", "metrics", "--epochs", "0",
                                    "--max-memory", "1G", "-o", str(tmp_path / "a.h5"), "-q"])
    assert res.exit_code == 0, res.output
    assert seen == [2**30]
    res = CliRunner().invoke(main, ["run", str(digits_run), "--probe", "metrics",
                                    "--max-memory", "lots", "-o", str(tmp_path / "b.h5")])
    assert res.exit_code == 2 and "--max-memory: not a size" in res.output
    import pickle

    worker = Worker(_plan(digits_run, probes=pickle.dumps([]), max_memory=123))  # as in a worker
    assert worker.ctx.max_memory == 123
