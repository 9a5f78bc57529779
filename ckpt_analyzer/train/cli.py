"""``ckpt-train``: parse, build a TrainConfig, run the Trainer, print a summary."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import UsageError, handle_errors
from ..selection import parse_ints


def _progress_printer(enabled: bool) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]w{task.fields[width]}"), BarColumn(),
                    TextColumn("epoch {task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)
    tasks: dict[int, Any] = {}

    def report(kind: str, width: int, epoch: int, total: int, m: dict[str, float]) -> None:
        if width not in tasks:
            tasks[width] = prog.add_task("", total=total, width=width, info="")
        info = f"train err {m['train_error']:.3f} test err {m['test_error']:.3f}" if m else ""
        prog.update(tasks[width], completed=epoch, info=info)

    return prog, report


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("out", type=click.Path(file_okay=True, dir_okay=True))
@click.option("--dataset", default="digits", show_default=True, help="Registered dataset name.")
@click.option("--data-root", default=None, help="Folder (or .npz file) holding the dataset.")
@click.option("--split-seed", default=0, show_default=True, type=int, help="Seed of digits' 75/25 split.")
@click.option("--arch", default="mcnn", show_default=True, help="Registered architecture.")
@click.option("--model", "model_spec", default=None, metavar="MODULE:FACTORY",
              help="User model: factory(width, num_classes, in_channels) -> nn.Module.")
@click.option("--widths", default="1,2,4,8", show_default=True, help="List or range a:b.")
@click.option("--epochs", default=100, show_default=True, type=int)
@click.option("--label-noise", default="0", show_default=True,
              help="Fraction in [0, 1), or a list (0.1,0.2): one run folder per rate under OUT.")
@click.option("--noise-kind", default="symmetric", show_default=True,
              help="symmetric | shuffle | asymmetric.")
@click.option("--noise-classes", default=None, help="Classes corrupted by asymmetric noise (list).")
@click.option("--optimizer", default="adam", show_default=True, help="adam | sgd.")
@click.option("--lr", default=1e-4, show_default=True, type=float)
@click.option("--momentum", default=0.9, show_default=True, type=float, help="SGD only.")
@click.option("--weight-decay", default=0.0, show_default=True, type=float)
@click.option("--warmup-epochs", default=0, show_default=True, type=int)
@click.option("--schedule", default="constant", show_default=True, help="constant | step | cosine.")
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Random crop (pad side/8) and horizontal flip.")
@click.option("--save", default="every", show_default=True, help="every | log:N | list of epochs.")
@click.option("--label-smoothing", default=None, help="radial | direction (Fridovich-Keil §3.1).")
@click.option("--ls-frequency", default=1.0, show_default=True, type=float)
@click.option("--ls-amplitude", default=0.5, show_default=True, type=float)
@click.option("--ls-index", default=1, show_default=True, type=int,
              help="Fourier basis index of the direction for --label-smoothing direction.")
@click.option("--seed", default=0, show_default=True, type=int, help="In [0, 2**64 - 1].")
@click.option("--seeds", default=None, metavar="0,1,2",
              help="A study: one run folder per seed (and per --label-noise rate) under OUT, "
                   "named noise<RATE>-seed<SEED>.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda:N.")
@click.option("--workers", type=int, default=None,
              help="Train N widths at a time in separate processes (or Ray tasks).")
@click.option("--executor", type=click.Choice(["local", "pool", "ray"]), default=None,
              help="Where widths are trained [local; pool with --workers].")
@click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
              help="Ray cluster to join (--executor ray) [a new local one].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@handle_errors
def main(out: str, dataset: str, data_root: str | None, split_seed: int, arch: str,
         model_spec: str | None, widths: str, epochs: int, label_noise: str, noise_kind: str,
         noise_classes: str | None, optimizer: str, lr: float, momentum: float,
         weight_decay: float, warmup_epochs: int, schedule: str, batch_size: int, augment: bool,
         save: str, label_smoothing: str | None, ls_frequency: float, ls_amplitude: float,
         ls_index: int, seed: int, seeds: str | None, device: str, workers: int | None,
         executor: str | None, ray_address: str | None, as_json: bool, quiet: bool) -> None:
    """Train a width sweep into OUT, writing the checkpoint contract (docs/checkpoints.md).

    With --seeds or several --label-noise rates, OUT is a study root: one run folder per
    (rate, seed) combination, OUT/noise<RATE>-seed<SEED>, each its own contract run (its
    run.json records the seed and the rate), trained one after the other.

    Re-running the same command resumes every width where it stopped."""
    rates = _parse_rates(label_noise)
    seed_list = _parse_seeds(seeds, seed)
    if seeds is None and len(rates) == 1:
        _train_one(out, dataset, data_root, split_seed, arch, model_spec, widths, epochs,
                   rates[0], noise_kind, noise_classes, optimizer, lr, momentum, weight_decay,
                   warmup_epochs, schedule, batch_size, augment, save, label_smoothing,
                   ls_frequency, ls_amplitude, ls_index, seed, device, workers, executor,
                   ray_address, as_json, quiet)
        return
    from pathlib import Path

    from ..study.runs import run_folder_name

    combos = [(r, s) for r in rates for s in seed_list]
    for r, s in combos:  # every setting checked before any training starts
        _config(dataset, data_root, split_seed, arch, model_spec, widths, epochs, r, noise_kind,
                noise_classes, optimizer, lr, momentum, weight_decay, warmup_epochs, schedule,
                batch_size, augment, save, label_smoothing, ls_frequency, ls_amplitude,
                ls_index, s)
    collected: dict[str, Any] = {}
    for r, s in combos:
        run_out = str(Path(out) / run_folder_name(r, s))
        if not as_json:
            click.echo(f"== {run_out}: label noise {r:g}, seed {s}")
        collected[run_out] = _train_one(run_out, dataset, data_root, split_seed, arch, model_spec, widths, epochs,
                   r, noise_kind, noise_classes, optimizer, lr, momentum, weight_decay,
                   warmup_epochs, schedule, batch_size, augment, save, label_smoothing,
                   ls_frequency, ls_amplitude, ls_index, s, device, workers, executor,
                   ray_address, as_json, quiet, echo_json=False)
    if as_json:  # one JSON document: {run folder: its per-width rows}
        click.echo(json.dumps(collected, indent=2))


def _parse_rates(text: str) -> list[float]:
    rates = []
    for part in text.split(","):
        try:
            rates.append(float(part.strip()))
        except ValueError:
            raise UsageError(f"--label-noise: '{part.strip()}' is not a number") from None
    if len(set(rates)) != len(rates):
        dup = next(r for r in rates if rates.count(r) > 1)
        raise UsageError(f"--label-noise: rate {dup:g} is given twice")
    return rates


def _parse_seeds(text: str | None, seed: int) -> list[int]:
    if text is None:
        return [seed]
    if seed != 0:
        raise UsageError("--seed and --seeds: give one of them")
    vals = [v for part in text.split(",") if part.strip()
            for v in parse_ints(part.strip(), "--seeds", 0) or []]  # keeps repeats: refused
    if not vals:
        raise UsageError("--seeds: give at least one seed")
    if len(set(vals)) != len(vals):
        dup = next(v for v in vals if vals.count(v) > 1)
        raise UsageError(f"--seeds: seed {dup} is given twice")
    return vals


def _config(dataset: str, data_root: str | None, split_seed: int, arch: str,
            model_spec: str | None, widths: str, epochs: int, label_noise: float,
            noise_kind: str, noise_classes: str | None, optimizer: str, lr: float,
            momentum: float, weight_decay: float, warmup_epochs: int, schedule: str,
            batch_size: int, augment: bool, save: str, label_smoothing: str | None,
            ls_frequency: float, ls_amplitude: float, ls_index: int, seed: int) -> Any:
    from .config import TrainConfig

    return TrainConfig(
        dataset=dataset, data_root=data_root, split_seed=split_seed,
        arch=model_spec or arch, widths=tuple(parse_ints(widths, "--widths", 1) or ()),
        epochs=epochs, label_noise=label_noise, noise_kind=noise_kind,
        noise_classes=None if noise_classes is None
        else tuple(parse_ints(noise_classes, "--noise-classes", 0) or ()),
        optimizer=optimizer.lower(), lr=lr, momentum=momentum, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, schedule=schedule, batch_size=batch_size, augment=augment,
        save=save, seed=seed, label_smoothing=label_smoothing, ls_frequency=ls_frequency,
        ls_amplitude=ls_amplitude, ls_index=ls_index,
    )


def _train_one(out: str, dataset: str, data_root: str | None, split_seed: int, arch: str,
               model_spec: str | None, widths: str, epochs: int, label_noise: float,
               noise_kind: str, noise_classes: str | None, optimizer: str, lr: float,
               momentum: float, weight_decay: float, warmup_epochs: int, schedule: str,
               batch_size: int, augment: bool, save: str, label_smoothing: str | None,
               ls_frequency: float, ls_amplitude: float, ls_index: int, seed: int, device: str,
               workers: int | None, executor: str | None, ray_address: str | None,
               as_json: bool, quiet: bool, echo_json: bool = True) -> Any:
    """Train one run folder; returns its per-width rows (what --json prints)."""
    if workers is not None and workers < 1:
        raise UsageError(f"--workers: must be at least 1 (got {workers})")
    kind = executor or ("ray" if ray_address else "pool" if workers and workers > 1 else "local")
    from ..data import DATASETS
    from ..models import MODELS

    cfg = _config(dataset, data_root, split_seed, arch, model_spec, widths, epochs, label_noise,
                  noise_kind, noise_classes, optimizer, lr, momentum, weight_decay,
                  warmup_epochs, schedule, batch_size, augment, save, label_smoothing,
                  ls_frequency, ls_amplitude, ls_index, seed)
    if model_spec is None:
        MODELS.check_name(arch)
    DATASETS.check_name(dataset)

    from ..device import resolve_device
    from .loop import Trainer, result_row
    from .loop import as_json as to_json

    dev = resolve_device(device)
    prog, report = _progress_printer(not quiet and sys.stderr.isatty())
    trainer = Trainer(cfg, out, dev, progress=report)
    trainer.prepare()
    for w in trainer.warnings:
        sys.stderr.write(f"warning: {w}\n")
    if kind != "local":
        from .parallel import train_widths

        def finished(r: Any) -> None:
            if report is not None:
                report("epoch", r.width, cfg.epochs, cfg.epochs, r.final)

        def run_all() -> Any:
            return train_widths(cfg, out, str(dev), workers, kind, ray_address, done=finished)
    else:
        run_all = trainer.run
    try:  # the folder's writer lock is held from prepare() until training ends
        if prog is not None:
            with prog:
                results = run_all()
        else:
            results = run_all()
    finally:
        trainer.close()
    if as_json:
        if echo_json:
            click.echo(to_json(results))
        return json.loads(to_json(results))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{out}: {cfg.arch} on {cfg.dataset}, {cfg.epochs} epochs, "
                        f"{cfg.label_noise:g} {cfg.noise_kind} noise")
    for col in ("width", "params", "train err", "noisy err", "test err", "test loss", "time s"):
        table.add_column(col, justify="right")
    for r in results:
        row = result_row(r)
        f = lambda k, row=row: "" if row.get(k) is None else f"{row[k]:.4f}"
        table.add_row(str(r.width), f"{r.params:,}", f("train_error"), f("noisy_error"),
                      f("test_error"), f("test_loss"),
                      "done before" if r.resumed_from == cfg.epochs else f"{r.seconds:.1f}")
    Console(soft_wrap=True).print(table)
    return json.loads(to_json(results))


if __name__ == "__main__":
    main()
