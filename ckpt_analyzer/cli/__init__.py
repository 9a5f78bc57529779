"""``ckpt-analyze``: click commands only; the work happens in the library.

Usage errors exit 2, failures exit 1, each with one line on stderr (docs/architecture.md). Listing and
``--help`` import neither torch nor h5py.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import UsageError, handle_errors
from ..plot import KINDS, kinds_help
from ..selection import parse_ints

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="ckpt-analyzer")
def main() -> None:
    """Stream checkpoints through probes into HDF5 cubes; report and plot them."""


def _batch_option(value: str, words: tuple[str, ...], hint: str) -> str | int:
    """A batch-size option: one of ``words`` or a positive integer (click's one-line error)."""
    if value in words:
        return value
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not {', '.join(words)} or an integer",
                                 param_hint=hint) from None
    if n < 1:
        raise click.BadParameter("must be positive", param_hint=hint)
    return n


REPLACE_OPT = click.option("--replace-builtin", is_flag=True,
                           help="Let a --plugin probe replace a built-in probe of the same name.")


STATE_KEY_OPT = click.option(
    "--state-key", default=None, metavar="KEY",
    help="The entry of a saved dict that holds the model's state "
         "({'epoch': ..., 'model_state_dict': ...}: model_state_dict) [found by its keys].")


def _load_plugins(plugins: tuple[str, ...], replace: bool = False) -> None:
    from ..probes import load_plugin

    for spec in plugins:
        load_plugin(spec, replace)


def _state_prefix(state_key: str | None, prefix: str | None) -> str | None:
    """--state-key K (and --prefix P): the keys under 'K.' ('K.P.'): a saved dict's entries are
    read as dotted keys (checkpoints.flatten_tensors)."""
    if state_key is None:
        return prefix
    key = state_key.strip(".")
    return f"{key}.{prefix.strip('.')}." if prefix else f"{key}."


@main.command("inspect-checkpoint", context_settings=CONTEXT)
@click.argument("path", type=click.Path())
@click.option("--model", default=None, metavar="SPEC",
              help="Check the keys against this model (a name, module:factory, ...) [the "
                   "arch its ckpt-analyzer metadata names].")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="Width of the model [its metadata's, else 1].")
@click.option("--dataset", default=None,
              help="Dataset giving num_classes and in_channels of a foreign file [digits].")
@click.option("--data-root", default=None, help="Folder of the dataset.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None)
@click.option("--in-channels", type=click.IntRange(min=1), default=None)
@click.option("--prefix", default=None, help="Module prefix of the saved keys to strip [auto].")
@STATE_KEY_OPT
@click.option("--allow-pt", is_flag=True,
              help="Also read .pt/.pth/.bin/.ckpt (weights_only=True) and DCP folders.")
@click.option("--trust-code", is_flag=True, help="Build an arch the metadata names as code.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def inspect_checkpoint(path: str, model: str | None, width: int | None, dataset: str | None,
                       data_root: str | None, num_classes: int | None, in_channels: int | None,
                       prefix: str | None, state_key: str | None, allow_pt: bool,
                       trust_code: bool, as_json: bool) -> None:
    """Tensors and metadata of one checkpoint (a file, a sharded Hugging Face folder or a DCP
    folder) and, with a model, how its keys fit it: missing, unexpected and mis-shaped keys,
    the prefix and the width that would fit. Exits 1 when it does not fit."""
    from ..checkpoints import format_key_report
    from ..checkpoints import inspect_checkpoint as inspect_ckpt
    from ..checkpoints.files import CKPT_FORMAT

    prefix = _state_prefix(state_key, prefix)
    info = inspect_ckpt(path, None, None, None, None, prefix, allow_pt)  # the listing
    contract = info["metadata"].get("format") == CKPT_FORMAT
    if model is not None or contract:
        if not contract and (num_classes is None or in_channels is None):
            from ..data import load_dataset

            data = load_dataset(dataset or "digits", data_root)
            num_classes = num_classes or data.num_classes
            in_channels = in_channels or data.in_channels
        info = inspect_ckpt(path, model, width, num_classes, in_channels, prefix, allow_pt,
                            trust_code)
    rep = info.get("report")
    if as_json:
        click.echo(json.dumps({**info, "report": rep.as_dict() if rep else None}, indent=2,
                              default=str))
    else:
        click.echo(f"{path}: {info['format']}, {info['tensors']} tensor(s)")
        meta = {k: v for k, v in info["metadata"].items() if len(str(v)) < 80}
        if meta:
            click.echo("  metadata " + ", ".join(f"{k}={v}" for k, v in meta.items()))
        for row in info["keys"][:20]:
            click.echo(f"    {row['key']} {row['shape']}")
        if len(info["keys"]) > 20:
            click.echo(f"    ... {len(info['keys']) - 20} more (--json lists all)")
        if rep is not None:
            click.echo(format_key_report(rep))
    if rep is not None and not rep.fits:
        sys.exit(1)


@main.command(context_settings=CONTEXT)
@click.argument("cubes", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, help="The merged cube (must not exist).")
@click.option("--partial", is_flag=True,
              help="Merge although shards are missing, still being written or unfinished "
                   "(each named in a warning).")
@handle_errors
def merge(cubes: tuple[str, ...], output: str, partial: bool) -> None:
    """Join the cubes of 'run --shard I/N' (or any cubes of one run, probes and configs) into one.

    Refuses, naming the key, cubes of different runs, probe versions, configs, seeds, outputs or
    fixed inputs, and cubes that measured one checkpoint from different contents; a cell
    present in two cubes must be equal in both. Refuses too (unless --partial) when a shard
    NAME.shard-I-of-N.h5 is missing, still being written, or was killed mid-run."""
    from ..cube.merge import merge_cubes

    stats = merge_cubes(cubes, output, partial=partial)
    for line in stats["warnings"]:
        sys.stderr.write(f"warning: {line} (merged without it: --partial)\n")
    click.echo(f"{output}: {stats['cells']} cell(s) of {stats['probes']} probe(s) from "
               f"{len(cubes)} cube(s), {stats['duplicates']} duplicate(s) equal, "
               f"{stats['failures']} failure(s)")


@main.command(context_settings=CONTEXT)
@click.option("--plugin", "plugins", multiple=True, help="Probe plugin: a .py file or a module.")
@REPLACE_OPT
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def probes(plugins: tuple[str, ...], replace_builtin: bool, as_json: bool) -> None:
    """List built-in and plugin probes, their parameters, and broken plugins."""
    _load_plugins(plugins, replace_builtin)
    from ..probes import PROBES, describe

    rows = [describe(PROBES.get(n)) for n in PROBES.names()]
    broken = [b.__dict__ for b in PROBES.broken()]
    if as_json:
        click.echo(json.dumps({"probes": rows, "broken": broken}, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']} (v{r['version']}, {r['origin']}): {r['description']}")
        for p in r["params"]:
            click.echo(f"    {p['name']}: {p['type']} = {p['default']!r}  {p['help']}")
    for b in broken:
        click.echo(f"BROKEN {b['name']} from {b['distribution']} ({b['target']}): {b['error']}")


@main.command(context_settings=CONTEXT)
@click.argument("cube", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def inspect(cube: str, as_json: bool) -> None:
    """Dimensions, coverage per probe, configs and provenance of a cube."""
    from ..cube import read_summary

    s = read_summary(cube)
    if as_json:
        click.echo(json.dumps(s, indent=2, default=str))
        return
    click.echo(_format_summary(cube, s))


def _format_summary(path: str, s: dict[str, Any]) -> str:
    lines = [f"{path}"]
    root = s.get("root", {})
    lines.append(f"  format {root.get('format')}  version {root.get('version')}  "
                 f"source {root.get('source')}")
    if root.get("normalize"):  # a foreign folder's --normalize
        norm = json.loads(str(root["normalize"]))
        lines.append(f"  preprocessing {norm['normalize']} (mean {norm['mean']}, std "
                     f"{norm['std']})")
    ep, wd = s.get("epochs", []), s.get("widths", [])
    lines.append(f"  epochs {len(ep)} ({_span(ep)})  widths {len(wd)} ({_span(wd)})")
    for name, p in s.get("probes", {}).items():
        cov = p.get("coverage", {})
        lines.append(f"  [{name}] v{p.get('version')} seed {p.get('seed')}  done "
                     f"{cov.get('done')}/{cov.get('total')} cells")
        lines.append(f"      config {json.dumps(p.get('config'), sort_keys=True)}")
        for m, dims in p.get("metrics", {}).items():
            lines.append(f"      {m}{tuple(dims) if not isinstance(dims, str) else dims}")
    for f in s.get("failures", []):
        lines.append(f"  failed w{f.get('width')} e{f.get('epoch')}: {f.get('error')}")
    return "\n".join(lines)


def _span(vals: list[Any]) -> str:
    if not vals:
        return "-"
    return f"{vals[0]}..{vals[-1]}" if len(vals) > 3 else ", ".join(map(str, vals))


@main.command(context_settings=CONTEXT)
@click.argument("cubes", metavar="CUBE...", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="The report as JSON on stdout.")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Patience T of the peak search, in epochs on any save grid [30].")
@click.option("--window", type=click.IntRange(min=0), default=None,
              help="Half-window dT of the noisy-error decrease rate, in epochs [5].")
@click.option("--subset", default=None, help="Spectrum subset of R_t [train].")
@click.option("--no-store", is_flag=True, help="Do not store the report in the cube.")
@click.option("--html", "html_out", default=None, metavar="REPORT.html",
              help="Also write one self-contained HTML report (figures embedded).")
@click.option("--allow-mixed", is_flag=True,
              help="Aggregate cubes of different datasets or architectures.")
@click.option("--layers", is_flag=True,
              help="Instead: every probe's per-layer values (module names) at one width and "
                   "epoch, as WeightWatcher's details table.")
@click.option("--width", type=int, default=None, help="--layers: the width [largest].")
@click.option("--epoch", type=int, default=None,
              help="--layers: the epoch (or step) [the last measured].")
@handle_errors
def report(cubes: tuple[str, ...], as_json: bool, patience: int | None, window: int | None,
           subset: str | None, no_store: bool, html_out: str | None, allow_mixed: bool,
           layers: bool, width: int | None, epoch: int | None) -> None:
    """Double-descent events per width, model-wise events and correlations of a cube.

    Times are epochs (Zhang & Wu's patience T = 30, dT = 5), on the curves interpolated
    linearly in epoch between saved checkpoints; an event whose patience runs past the last
    epoch is reported as not found.

    Also stored in the cube under report/ (dropped when 'ckpt-analyze run' rewrites it).

    Several cubes (a study: one cube per seed and noise rate): per noise rate and width the
    events of each run with their mean and sample std, model-wise events with how many runs
    agree, the T_R,peak vs T_E,peak fit over all runs with its 95% CI; not stored in the cubes.
    Refuses cubes of different datasets or architectures (unless --allow-mixed), different
    configs of a probe, and a seed given twice; a cube still being written is used as far as
    it is finished, with a note. A folder argument stands for the analysis.h5 of every run
    folder under it (a study root from 'ckpt-train --seeds ...').

    --layers prints the per-layer table of one cube instead (not stored).
    """
    if layers:
        _layers_report(cubes, as_json, width, epoch,
                       {"--patience": patience, "--window": window, "--subset": subset,
                        "--html": html_out, "--no-store": no_store or None})
        return
    if width is not None or epoch is not None:
        raise UsageError(f"{'--width' if width is not None else '--epoch'}: only with --layers")
    from .. import events

    args: dict[str, Any] = {
        "patience": events.DEFAULT_PATIENCE if patience is None else patience,
        "window": events.DEFAULT_WINDOW if window is None else window, "subset": subset}
    from ..study import format_study, load_study
    from ..study.runs import expand_cubes

    cubes = tuple(expand_cubes(cubes))
    if html_out is not None:  # before anything is stored: the page may not replace an input
        from .._atomic import check_output

        check_output(html_out, "html", cubes, "--html")
    if len(cubes) == 1:  # today's report, stored in the cube; --html adds the page
        from ..report import build_report, format_report, write_report

        rep = build_report(cubes[0], **args)
        if not no_store:
            write_report(cubes[0], rep)
        click.echo(json.dumps(rep, indent=2) if as_json else format_report(rep))
        study = load_study(cubes, **args) if html_out is not None else None
    else:
        study = load_study(cubes, allow_mixed=allow_mixed, **args)
        click.echo(json.dumps(study, indent=2) if as_json else format_study(study))
    if html_out is not None and study is not None:
        from ..study.html import write_html

        write_html(study, html_out, inputs=cubes)
        sys.stderr.write(f"wrote {html_out}\n")


def _layers_report(cubes: tuple[str, ...], as_json: bool, width: int | None, epoch: int | None,
                   other: dict[str, Any]) -> None:
    from ..study.runs import expand_cubes

    given = [k for k, v in other.items() if v is not None]
    if given:
        raise UsageError(f"{given[0]}: not with --layers")
    found = expand_cubes(cubes)
    if len(found) != 1:
        raise UsageError(f"--layers: takes one cube ({len(found)} given)")
    from ..report.layers import format_layer_table, layer_table

    table = layer_table(found[0], width, epoch)
    click.echo(json.dumps(table, indent=2) if as_json else format_layer_table(table))


@main.command(context_settings=CONTEXT)
@click.argument("cubes", metavar="CUBE...", nargs=-1, required=True, type=click.Path())
@click.option("--to", "target", required=True, metavar="TARGET",
              help="tensorboard | wandb | csv | parquet.")
@click.argument("out_dir", metavar="DIR", type=click.Path())
@click.option("--probe", "probes", multiple=True, help="Only this probe (repeat) [all].")
@click.option("--widths", default=None, help="Only these widths: one, a list or a range a:b.")
@click.option("--max-scalars", type=int, default=None,
              help="tensorboard/wandb: a metric with more values per cell than this is left "
                   "out (a 'bin' metric becomes histograms) [32].")
@click.option("--overwrite", is_flag=True, help="Replace the files of an earlier export.")
@click.option("--wandb-project", default="ckpt-analyzer", show_default=True,
              help="wandb: the project.")
@click.option("--wandb-run", default=None, metavar="ID",
              help="wandb: add to this existing run (resume), next to its training curves; "
                   "one cube and one width.")
@click.option("--wandb-mode", type=click.Choice(["offline", "online"]), default="offline",
              show_default=True, help="wandb: offline writes DIR/wandb for 'wandb sync'.")
@click.option("--follow", is_flag=True,
              help="tensorboard/wandb: export one CUBE live, while 'ckpt-analyze run' writes it: "
                   "every materialization's new cells (steps appended, W&B runs resumed), until "
                   "no run writes the cube.")
@click.option("--poll", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="--follow: seconds between looks at the cube.")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="--follow: give up (exit 1) after this many seconds without a change; 0 "
                   "waits for ever.")
@handle_errors
def export(cubes: tuple[str, ...], target: str, out_dir: str, probes: tuple[str, ...],
           widths: str | None, max_scalars: int | None, overwrite: bool, wandb_project: str,
           wandb_run: str | None, wandb_mode: str, follow: bool, poll: float,
           idle_timeout: float) -> None:
    """Export cubes to TensorBoard, W&B, CSV or Parquet under DIR.

    \b
    tensorboard: DIR/<run>/w<width>, the epoch (or step) as the global step
    wandb:       one W&B run per cube and width, offline under DIR/wandb
    csv|parquet: one tidy table DIR/analysis.csv|.parquet (run, width, epoch, probe,
                 metric, coordinates..., value)

    <run> is the cube's file stem (its run folder's name for analysis.h5). Only measured
    cells are exported; NaN values are not written to TensorBoard/W&B. A folder argument
    stands for the analysis.h5 of every run folder under it.

    --follow (tensorboard, wandb; one cube): export live while 'ckpt-analyze run' writes the
    cube, only the cells new at each of its materializations, recorded in
    DIR/.ckpt-live-<run>.json so that a restart writes no step twice."""
    from ..export import MAX_SCALARS, check_target
    from ..export import export as run_export
    from ..study.runs import expand_cubes

    check_target(target)
    given = {"--max-scalars": (max_scalars is not None, ("tensorboard", "wandb")),
             "--wandb-project": (wandb_project != "ckpt-analyzer", ("wandb",)),
             "--wandb-mode": (wandb_mode != "offline", ("wandb",))}
    for flag, (used, targets) in given.items():
        if used and target not in targets:
            raise UsageError(f"{flag}: not with --to {target}")
    for flag, used in (("--poll", poll != 5.0), ("--idle-timeout", idle_timeout != 3600.0)):
        if used and not follow:
            raise UsageError(f"{flag}: only with --follow")
    if follow:
        _export_follow(cubes, target, out_dir, probes, widths, max_scalars, overwrite,
                       wandb_project, wandb_run, wandb_mode, poll, idle_timeout)
        return
    res = run_export(expand_cubes(cubes), target, out_dir, probes=list(probes) or None,
                     widths=parse_ints(widths, "--widths", 1),
                     max_scalars=MAX_SCALARS if max_scalars is None else max_scalars,
                     overwrite=overwrite, wandb_project=wandb_project, wandb_run=wandb_run,
                     wandb_mode=wandb_mode)
    for note in res["notes"]:
        sys.stderr.write(f"note: {note}\n")
    if target == "tensorboard":
        click.echo(f"{out_dir}: {len(res['runs'])} run(s), {res['scalars']} scalar(s), "
                   f"{res['histograms']} histogram(s) (tensorboard --logdir {out_dir})")
    elif target == "wandb":
        click.echo(f"{out_dir}: {len(res['runs'])} W&B run(s) ({', '.join(res['ids'])}), "
                   f"{res['scalars']} scalar(s)")
        for r in res["runs"]:
            click.echo(f"  {r}" + (f"  (upload: wandb sync {r})" if wandb_mode == "offline"
                                   else ""))
    else:
        click.echo(f"{res['files'][0]}: {res['rows']} row(s)")


def _export_follow(cubes: tuple[str, ...], target: str, out_dir: str, probes: tuple[str, ...],
                   widths: str | None, max_scalars: int | None, overwrite: bool,
                   wandb_project: str, wandb_run: str | None, wandb_mode: str, poll: float,
                   idle_timeout: float) -> None:
    """``export --follow``: one cube exported live (``export.live``)."""
    from ..export import MAX_SCALARS
    from ..export.live import LiveExporter, follow

    if len(cubes) != 1:
        raise UsageError(f"--follow: takes one cube ({len(cubes)} given)")
    if wandb_run is not None:
        raise UsageError("--wandb-run: not with --follow (it makes one W&B run per width)")
    exporter = LiveExporter(target, out_dir, probes=list(probes) or None,
                            widths=parse_ints(widths, "--widths", 1),
                            max_scalars=MAX_SCALARS if max_scalars is None else max_scalars,
                            overwrite=overwrite, wandb_project=wandb_project,
                            wandb_mode=wandb_mode)
    notes: set[str] = set()

    def shown(res: dict[str, Any]) -> None:
        for note in res["notes"]:
            if note not in notes:
                notes.add(note)
                sys.stderr.write(f"note: {note}\n")
        sys.stderr.write(f"exported {res['cells']} new cell(s), {res['scalars']} scalar(s)\n")

    with exporter:
        n = follow(exporter, cubes[0], poll, idle_timeout, shown)
    click.echo(f"{out_dir}: {cubes[0]} exported live to {target} ({n} update(s))")


@main.command(context_settings=CONTEXT, epilog="\b\nKinds:\n" + kinds_help())
@click.argument("cubes", metavar="CUBE...", nargs=-1, required=True, type=click.Path())
@click.option("--kind", required=True, help=" | ".join(KINDS) + " (see Kinds below).")
@click.option("-o", "--output", required=True, help="Figure file: .png, .pdf or .svg.")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="Width of one-width figures [largest].")
@click.option("--subset", default=None, help="Subset (spectrum, double-descent, sharpness).")
@click.option("--epochs", default=None, help="Epochs: one, a list or a range a:b.")
@click.option("--dpi", type=click.IntRange(min=10, max=1200), default=150, show_default=True,
              help="Resolution of .png output.")
@click.option("--allow-mixed", is_flag=True,
              help="Several cubes: allow different datasets or architectures.")
@handle_errors
def plot(cubes: tuple[str, ...], kind: str, output: str, width: int | None,
         subset: str | None, epochs: str | None, dpi: int, allow_mixed: bool) -> None:
    """Draw a figure of a cube (matplotlib, the 'plot' extra).

    Several cubes (a study): double-descent and spectrum with a mean ± std band over seeds and
    one line per noise rate; the other kinds take one cube. A folder argument stands for the
    analysis.h5 of every run folder under it."""
    from ..plot import PlotOptions
    from ..plot import plot as draw
    from ..study.runs import expand_cubes

    cubes = tuple(expand_cubes(cubes))
    sel = parse_ints(epochs, "--epochs", 0)
    opts = PlotOptions(width=width, subset=subset, epochs=None if sel is None else tuple(sel),
                       dpi=dpi)
    if len(cubes) == 1:
        out = draw(cubes[0], kind, output, opts)
    else:
        from ..study.figures import plot_study

        out = plot_study(cubes, kind, output, opts, allow_mixed=allow_mixed)
    click.echo(str(out))


from . import run as _run  # noqa: E402,F401  (registers `run`)
