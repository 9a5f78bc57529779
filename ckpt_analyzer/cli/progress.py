"""The run command's display: progress with an ETA, each probe's mean seconds, one-line
warnings shown once per command."""

from __future__ import annotations

import sys
from typing import Any


class _Warnings:
    """Warnings as one line each (``warning: <message>``, no file, line or source), each text
    shown once per command however many runs, workers or checkpoints raise it.

    ``install()`` replaces :func:`warnings.showwarning` (the probes' ``warnings.warn`` in this
    process) until ``restore()``; the runner's ``progress("warn", msg)`` (warnings raised in
    workers) and the summary's warnings go through :meth:`emit` too."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._old: Any = None

    def emit(self, message: str, category: type[Warning] | None = None) -> None:
        text = " ".join(str(message).split())
        if text in self.seen:
            return
        self.seen.add(text)
        kind = "" if category in (None, UserWarning) else f" ({category.__name__})"
        sys.stderr.write(f"warning{kind}: {text}\n")

    def _show(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
              file: Any = None, line: str | None = None) -> None:
        self.emit(str(message), category)

    def install(self) -> None:
        import warnings

        self._old = warnings.showwarning
        warnings.showwarning = self._show

    def restore(self) -> None:
        import warnings

        if self._old is not None:
            warnings.showwarning = self._old
            self._old = None


def _clock(seconds: float) -> str:
    s = round(max(seconds, 0.0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _eta(total: float | None, done: float, first: float | None, last: float | None,
         now: float) -> str:
    """Time left from the mean wall time per checkpoint so far (whatever the checkpoints'
    length; rich's own estimate only looks at the last 30 s and shows ``-:--:--`` when a
    checkpoint takes longer), counted down since the last checkpoint finished."""
    if total is None or first is None or last is None or done <= 0:
        return "after the 1st"
    per = (last - first) / done
    return _clock((total - done) * per - (now - last))


def _probe_line(seconds: dict[str, float], counts: dict[str, int], most: int = 3) -> str:
    """The ``most`` slowest probes' mean seconds per checkpoint so far, slowest first."""
    means = sorted(((seconds[n] / counts[n], n) for n in seconds if counts.get(n)), reverse=True)
    line = ", ".join(f"{n} {m:.1f} s" if m < 60 else f"{n} {_clock(m)}"
                     for m, n in means[:most])
    return line + (f", +{len(means) - most}" if len(means) > most else "")


def _progress(enabled: bool, warns: _Warnings | None = None) -> tuple[Any, Any]:
    """A rich progress display (None when not ``enabled``) and the runner's callback: per
    checkpoint, the ETA of :func:`_eta` and each probe's mean seconds per checkpoint; warnings
    of the workers through ``warns``."""
    import time

    def warn(msg: str) -> None:
        if warns is not None:
            warns.emit(msg)

    if not enabled:
        return None, (lambda kind, arg: warn(arg) if kind == "warn" else None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Column
    from rich.text import Text

    state: dict[str, Any] = {"first": None, "last": None}
    seconds: dict[str, float] = {}
    counts: dict[str, int] = {}

    class EtaColumn(ProgressColumn):
        max_refresh = 1.0

        def render(self, task: Task) -> Text:
            return Text("eta " + _eta(task.total, task.completed, state["first"], state["last"],
                                      time.monotonic()), style="progress.remaining")

    console = Console(stderr=True)
    prog = Progress(TextColumn("{task.description}", table_column=Column(min_width=11)),
                    BarColumn(bar_width=20),
                    MofNCompleteColumn(table_column=Column(no_wrap=True)),
                    TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)),
                    EtaColumn(table_column=Column(no_wrap=True, min_width=17)),
                    TextColumn("{task.fields[probes]}", table_column=Column(
                        no_wrap=True, overflow="ellipsis", max_width=60)),
                    console=console, transient=True)

    def report(kind: str, arg: Any) -> None:
        if kind == "start":
            state["task"] = prog.add_task("checkpoints", total=arg, probes="")
            state["first"] = time.monotonic()
        elif kind == "grow":  # run --follow: a new round of checkpoints
            prog.update(state["task"], total=prog.tasks[0].total + arg)
        elif kind == "seconds":  # one checkpoint's seconds per probe
            for name, sec in arg.items():
                seconds[name] = seconds.get(name, 0.0) + sec
                counts[name] = counts.get(name, 0) + 1
        elif kind == "advance":
            state["last"] = time.monotonic()
            prog.update(state["task"], advance=1, description=f"w{arg.width} e{arg.epoch}",
                        probes=_probe_line(seconds, counts))
        elif kind == "fail":
            state["last"] = time.monotonic()
            prog.update(state["task"], advance=1)
            console.print(f"[yellow]skipped[/] {arg}")
        elif kind == "warn":
            warn(arg)

    return prog, report
