"""The trainer's widths in parallel: ``ckpt-train --workers N`` (spawned processes) or
``--executor ray`` (Ray tasks). Each width is trained by :meth:`Trainer.train_width` exactly as
in the serial loop (its seeds derive from the run seed and the width alone), so the
checkpoints are the same bits as a serial run with the same torch threads per width, and a
killed run resumes every width where it stopped.

The parent prepares the run folder once (run.json, labels) and holds its writer lock; each
worker re-reads it (the same manifest check as a resumed run, without taking the lock) and
trains one width at a time, widest first so the longest jobs start early.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

from ..executors.base import threads_per_worker
from ..executors.work import set_threads
from .config import TrainConfig
from .loop import WidthResult


def train_one_width(cfg: TrainConfig, out: str, device: str, width: int,
                    threads: int | None) -> WidthResult:
    """The trainer's unit of work: one width, in any process (picklable arguments only)."""
    import torch

    from .loop import Trainer

    set_threads(threads)
    trainer = Trainer(cfg, out, torch.device(device))
    trainer.prepare(lock=False)  # the parent (ckpt-train) holds the folder's writer lock
    return trainer.train_width(width)


def _order(cfg: TrainConfig) -> list[int]:
    return sorted(cfg.widths, key=lambda w: -w)  # widest (slowest) first


def train_widths(cfg: TrainConfig, out: str | Path, device: str, workers: int | None,
                 executor: str = "pool", ray_address: str | None = None,
                 threads: int | None = None,
                 done: Callable[[WidthResult], None] | None = None) -> list[WidthResult]:
    """Train ``cfg.widths`` in parallel (the run folder must be prepared); results in the
    order of ``cfg.widths``. ``done`` is called as each width finishes."""
    widths = _order(cfg)
    out = Path(out).resolve()  # workers may run elsewhere (Ray nodes) or in another folder
    results: dict[int, WidthResult] = {}
    if executor == "ray":
        from ..executors.ray import connect

        ray = connect(ray_address)
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        t = threads or 1
        fn = ray.remote(num_cpus=t, max_retries=2)(train_one_width)
        pending = {fn.remote(cfg, str(out), device, w, t): w for w in widths}
        del n  # Ray schedules by the num_cpus of each task
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            r = ray.get(ready[0])
            del pending[ready[0]]
            results[r.width] = r
            if done:
                done(r)
        return [results[w] for w in cfg.widths]
    n = min(workers or 1, len(widths))
    t = threads if threads is not None else threads_per_worker(n)
    with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as pool:
        futs: dict[Future[WidthResult], int] = {
            pool.submit(train_one_width, cfg, str(out), device, w, t): w for w in widths}
        left: set[Future[WidthResult]] = set(futs)
        try:
            while left:
                finished, left = wait(left, return_when=FIRST_COMPLETED)
                for f in finished:
                    r = f.result()
                    results[r.width] = r
                    if done:
                        done(r)
        except BaseException:
            for f in left:
                f.cancel()
            raise
    return [results[w] for w in cfg.widths]

