"""``ckpt-analyze run``: options -> :class:`~ckpt_analyzer.runner.Runner` per run folder (a
study root: each run folder in turn), the summary printed."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import UsageError, handle_errors
from ..selection import parse_ints, parse_size
from . import CONTEXT, REPLACE_OPT, STATE_KEY_OPT, _batch_option, _load_plugins, _state_prefix, main
from .progress import _progress, _Warnings


@main.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--probe", "probes", multiple=True, required=True,
              help="Probe to run (repeat, or 'all').")
@click.option("-o", "--output", default=None, help="Cube path [RUN_DIR/analysis.h5].")
@click.option("--set", "sets", multiple=True, metavar="PROBE.PARAM=VALUE", help="Probe parameter.")
@click.option("--config", "config_file", default=None, help="TOML file with a table per probe.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda:N.")
@click.option("--tf32", is_flag=True,
              help="CUDA: allow TF32 matmuls and convolutions (faster, ~3 decimal digits); "
                   "off by default: full float32 and deterministic cuDNN.")
@click.option("--batch-size", default="auto", show_default=True, help="auto or samples per batch.")
@click.option("--forward-batch-size", default="same", show_default=True,
              help="Samples per forward-only batch (metrics, normalization, spectrum, "
                   "interpolation, landscape): same (as --batch-size, bit-identical), auto or "
                   "an integer; larger is faster on a GPU and may change the last bits.")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Memory the probes' batches may take on the device, e.g. 8G: batches are "
                   "lowered to fit (the numbers of that smaller --batch-size) [no budget].")
@click.option("--widths", default=None, help="Widths: one, a list or a range a:b.")
@click.option("--epochs", default=None, help="Epochs: one, a list or a range a:b.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the probes' inputs.")
@click.option("--plugin", "plugins", multiple=True, help="Probe plugin: a .py file or a module.")
@REPLACE_OPT
@click.option("--overwrite", is_flag=True,
              help="Recompute a probe whose config changed; start afresh a cube of another run.")
@click.option("--strict", is_flag=True, help="Stop at the first bad checkpoint or failing probe.")
@click.option("--model", default=None, metavar="MODULE:FACTORY",
              help="Model of foreign checkpoints: a name, module:factory, file.py:factory, "
                   "torchvision:NAME or timm:NAME.")
@click.option("--trust-code", is_flag=True,
              help="Build an arch that the checkpoints name as code (module:factory, "
                   "file.py:factory): imports and runs it. Only for folders you trust.")
@click.option("--dataset", default=None, help="Dataset of foreign checkpoints [digits].")
@click.option("--data-root", default=None, help="Folder of the dataset.")
@click.option("--pattern", default=None,
              help="Foreign layout, e.g. 'w{width}/ckpt_{epoch}.safetensors' or "
                   "'checkpoint-{step}/model.safetensors'.")
@click.option("--allow-pt", is_flag=True,
              help="Also read .pt/.pth/.bin/.ckpt state_dicts (weights_only=True).")
@click.option("--prefix", default=None, help="Module prefix of the saved keys to strip [auto].")
@STATE_KEY_OPT
@click.option("--normalize", default=None, metavar="MEAN,STD|none|dataset",
              help="Foreign folder: the model's input preprocessing, (x - MEAN) / STD of pixels "
                   "in [0, 1] (per channel: M1,..,MC,S1,..,SC), none, or the dataset's own "
                   "statistics [dataset]. Recorded in the cube.")
@click.option("-v", "--verbose", is_flag=True,
              help="For a checkpoint that does not fit the model: every missing, unexpected "
                   "and mis-shaped key, the prefix and the width that fit.")
@click.option("--width", "single_width", type=click.IntRange(min=1), default=1, show_default=True,
              help="Width of a --pattern without {width} (a single model).")
@click.option("--workers", default=None, metavar="N|auto",
              help="Measure in N processes on this machine (or N Ray actors); auto: processes "
                   "for a small model, else this process's threads.")
@click.option("--executor", type=click.Choice(["local", "pool", "ray"]), default=None,
              help="Where checkpoints are measured [local; pool with --workers N].")
@click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
              help="Ray cluster to join (--executor ray) [a new local one].")
@click.option("--devices", default=None, metavar="0,1",
              help="CUDA devices of the pool workers, one worker each [all visible].")
@click.option("--shard", default=None, metavar="I/N",
              help="Measure only share I of N of the cells, into its own cube (see merge).")
@click.option("--follow", is_flag=True,
              help="Analyze a run while it trains: pick up new checkpoints and widths until the "
                   "trainer marks the run done.")
@click.option("--poll", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="--follow: seconds between looks at the run folder.")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=3600.0,
              show_default=True,
              help="--follow: give up (exit 1) after this many seconds in which the trainer "
                   "wrote nothing; 0 waits for ever.")
@click.option("--json", "as_json", is_flag=True, help="Summary as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@handle_errors
def run(run_dir: str, probes: tuple[str, ...], output: str | None, sets: tuple[str, ...],
        config_file: str | None, device: str, tf32: bool, batch_size: str,
        forward_batch_size: str, max_memory: str | None,
        widths: str | None,
        epochs: str | None, seed: int, plugins: tuple[str, ...], overwrite: bool, strict: bool,
        model: str | None, trust_code: bool, dataset: str | None, data_root: str | None,
        pattern: str | None, allow_pt: bool, prefix: str | None, single_width: int,
        replace_builtin: bool,
        workers: str | None,
        executor: str | None, ray_address: str | None, devices: str | None, shard: str | None,
        follow: bool, poll: float, idle_timeout: float, as_json: bool, quiet: bool,
        state_key: str | None = None, normalize: str | None = None, verbose: bool = False
        ) -> None:
    """Run probes over every checkpoint of RUN_DIR into a cube; re-runs compute what is missing."""
    from pathlib import Path

    from ..errors import CkptError
    from ..seeds import check_seed

    check_seed(seed)
    if not follow and not Path(run_dir).is_dir():  # before torch loads: errors stay instant
        raise CkptError("no such run folder", run_dir)
    from ..executors.base import executor_kind

    n_workers: int | str | None = workers
    if workers is not None and workers != "auto":
        try:
            n_workers = int(workers)
        except ValueError:
            raise UsageError(f"--workers: a number or auto (got {workers})") from None
    dev_list = None
    if devices is not None:
        idx = parse_ints(devices, "--devices", 0) or []
        dev_list = [f"cuda:{i}" for i in idx]
        if n_workers is None:
            n_workers = len(dev_list)
    kind = executor_kind(executor, n_workers, dev_list, ray_address)  # the Runner's rule too
    from ..executors.shard import parse_shard

    shard_of = parse_shard(shard) if shard is not None else None
    prefix = _state_prefix(state_key, prefix)
    if normalize is not None:
        from ..data.preprocessing import parse_normalize

        parse_normalize(normalize)  # a bad value fails before torch loads
    _load_plugins(plugins, replace_builtin)
    from ..probes import make_probes, parse_settings

    settings = parse_settings(sets, config_file)
    # built once, here (the Runner takes the instances as they are); bad names or parameters
    # fail before torch loads
    built = make_probes(probes, settings)
    from ..runner import Runner

    bs = _batch_option(batch_size, ("auto",), "--batch-size")
    fwd = _batch_option(forward_batch_size, ("same", "auto"), "--forward-batch-size")
    fbs = None if fwd == "same" else fwd
    options = dict(  # one run folder's Runner options (a study root's runs share them)
        probes=built, settings=settings, device=device, tf32=tf32, batch_size=bs,
        forward_batch_size=fbs, max_memory=None if max_memory is None else parse_size(max_memory),
        widths=parse_ints(widths, "--widths", 1), epochs=parse_ints(epochs, "--epochs", 0),
        seed=seed, overwrite=overwrite, strict=strict, model=model, trust_code=trust_code,
        dataset=dataset, data_root=data_root, pattern=pattern, allow_pt=allow_pt, prefix=prefix,
        width=single_width, executor=kind, workers=None if kind == "local" else n_workers,
        devices=dev_list, ray_address=ray_address, shard=shard_of, plugins=plugins,
        normalize=normalize, verbose=verbose)
    from pathlib import Path

    from ..study.runs import find_runs

    study_runs = ([] if (Path(run_dir) / "run.json").is_file() or not Path(run_dir).is_dir()
                  or pattern is not None else find_runs(run_dir))
    if study_runs:
        # a study root: every run folder under it, one cube each (its own analysis.h5)
        for flag, value in (("-o", output), ("--shard", shard)):
            if value is not None:
                raise UsageError(f"{flag}: not with a study root ({run_dir} holds "
                                 f"{len(study_runs)} run folders, each analyzed into its own "
                                 "analysis.h5)")
        failed_runs = []
        warns = _Warnings()  # a warning of every run is shown once
        for rd in study_runs:
            click.echo(f"== {rd}", err=as_json)
            try:
                _analyze_one(str(rd), Runner, dict(options, output=None), as_json, quiet, warns)
            except SystemExit as exc:
                if exc.code:
                    failed_runs.append(str(rd))
        if failed_runs:
            sys.stderr.write(f"error: {len(failed_runs)} of {len(study_runs)} run(s) had "
                             f"failures: {', '.join(failed_runs)}\n")
            sys.exit(1)
        return
    _analyze_one(run_dir, Runner, dict(options, output=output, follow=follow, poll=poll,
                                       idle_timeout=idle_timeout), as_json, quiet)


def _analyze_one(run_dir: str, analysis_cls: Any, kwargs: dict[str, Any], as_json: bool,
                 quiet: bool, warns: _Warnings | None = None) -> None:
    """One ``Runner`` of one run folder, its summary printed; exits 1 on failures. ``warns``:
    the command's warnings shown so far (a study root's runs share it)."""
    verbose = kwargs.pop("verbose", False)
    warns = warns or _Warnings()
    prog, report = _progress(not quiet and sys.stderr.isatty(), warns)
    analysis = analysis_cls(run_dir=run_dir, progress=report, **kwargs)
    warns.install()
    try:
        if prog is not None:
            with prog:
                summary = analysis.run()
        else:
            summary = analysis.run()
    finally:
        warns.restore()
    for w in summary.warnings:
        warns.emit(w)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        click.echo(f"{summary.cube}: {summary.computed} checkpoint(s) measured, "
                   f"{summary.skipped_done} already done, {len(summary.failed)} failed, "
                   f"probes {', '.join(summary.probes)} ({summary.seconds:.1f} s"
                   + (f", {summary.executor} x{summary.workers}" if summary.executor != "local"
                      else "")
                   + (f", shard {summary.shard}" if summary.shard else "") + ")")
        for f in summary.failed:
            click.echo(f"  failed: {f['error']}")
    misfit = next((f for f in summary.failed if "does not fit the model" in str(f["error"])), None)
    if verbose and misfit is not None:
        _key_details(misfit, run_dir, kwargs)
    if summary.stopped:
        sys.stderr.write(f"error: {summary.stopped}\n")
        sys.exit(1)
    if summary.failed:
        sys.stderr.write(f"error: {summary.failed[0]['error']} ({len(summary.failed)} "
                         f"failure(s) in all, recorded in {summary.cube})\n")
        sys.exit(1)


def _key_details(failure: dict[str, Any], run_dir: str, kw: dict[str, Any]) -> None:
    """run -v: the key-matching report of the first checkpoint that did not fit the model."""
    from ..checkpoints import format_key_report, inspect_checkpoint, read_run_json

    pattern = kw.get("pattern")
    single = pattern is not None and "{width}" not in pattern
    nc = ic = None
    if read_run_json(run_dir) is None:
        from ..data import load_dataset

        data = load_dataset(kw.get("dataset") or "digits", kw.get("data_root"))
        nc, ic = data.num_classes, data.in_channels
    info = inspect_checkpoint(failure["path"], kw.get("model"), failure.get("width"), nc, ic,
                              kw.get("prefix"), bool(kw.get("allow_pt")),
                              bool(kw.get("trust_code")),
                              width_flag="--width" if single else "width")
    sys.stderr.write(format_key_report(info["report"]) + "\n")
