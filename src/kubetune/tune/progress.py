"""`kubetune run`'s display: live progress while Tune runs, the final table and the best trial."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from kubetune.tune.tracking import Snapshot, TrialRecord, TrialState, best_key

# Table colours per state (none on a plain, non-terminal output).
STATE_STYLES = {TrialState.ERROR: "red", TrialState.RUNNING: "cyan", TrialState.STOPPED: "dim",
                TrialState.INTERRUPTED: "yellow", TrialState.PENDING: "dim"}


def make_console(stderr: bool = False, force_terminal: bool | None = None) -> Console:
    """A console for `kubetune run`: live and coloured on a terminal; elsewhere (a file, a pipe, a pod's
    log) plain text that is never wrapped, so paths and ids stay whole and lines stay greppable."""
    probe = Console(stderr=stderr, force_terminal=force_terminal)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, width=100_000, color_system=None, soft_wrap=True, highlight=False,
                   force_terminal=False, emoji=False)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _config(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in config.items())


def states_text(counts: dict[str, int]) -> str:
    """ "2 running, 1 pending, 3 terminated, 1 stopped, 0 error" (stopped and interrupted only when there are any)."""
    shown = [s for s in TrialState.ALL if counts.get(s) or s not in (TrialState.STOPPED, TrialState.INTERRUPTED)]
    order = [TrialState.RUNNING, TrialState.PENDING, TrialState.TERMINATED, TrialState.STOPPED, TrialState.ERROR,
             TrialState.INTERRUPTED]
    return ", ".join(f"{counts.get(s, 0)} {s}" for s in order if s in shown)


def summary_line(snapshot: Snapshot) -> str:
    c = snapshot.counts
    best = snapshot.best
    best_text = f"best {snapshot.metric}={_fmt(best.metric)} ({best.id})" if best else "best: none yet"
    line = f"trials {snapshot.done}/{c['total']} done: {states_text(c)} | {best_text} | {snapshot.elapsed_s:.0f}s"
    waiting = [t for t in snapshot.trials if t.pending_reason]
    if waiting:
        line += f" | {len(waiting)} waiting: {waiting[0].pending_reason}"
    return line


class LiveProgress:
    """A sink for ExperimentTracker: a live panel on a terminal, a line every few seconds elsewhere."""

    def __init__(self, console: Console | None = None, line_interval_s: float = 5.0):
        self.console = console or Console()
        self.live: Live | None = None
        self.line_interval_s = line_interval_s
        self._last_line = 0.0
        self._last_text = ""
        self._warned = 0

    def __enter__(self) -> "LiveProgress":
        if self.console.is_terminal:
            self.live = Live(Text("starting trials..."), console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None

    def __call__(self, snapshot: Snapshot) -> None:
        for text in snapshot.warnings[self._warned:]:
            self.console.print(f"[yellow]warning:[/] {text}", highlight=False)
        self._warned = len(snapshot.warnings)
        if self.live is not None:
            self.live.update(self.render(snapshot))
            return
        text = summary_line(snapshot)
        now = time.monotonic()
        if text.split(" | ")[:2] != self._last_text.split(" | ")[:2] and now - self._last_line >= self.line_interval_s:
            self.console.print(text, highlight=False)
            self._last_line, self._last_text = now, text

    def render(self, snapshot: Snapshot) -> Group:
        c = snapshot.counts
        bar = ProgressBar(total=max(c["total"], 1), completed=snapshot.done, width=40)
        head = Text(f" {snapshot.done}/{c['total']} trials done  ", style="bold")
        states = Text(f"{states_text(c)}  ({snapshot.elapsed_s:.0f}s)")
        best = snapshot.best
        best_line = Text(
            f"best {snapshot.metric} = {_fmt(best.metric)}  {best.id}  {_config(best.config)}" if best else "best: none yet",
            style="green" if best else "dim",
        )
        running = [t for t in snapshot.trials if t.state == "running"][:8]
        table = trials_table(running, snapshot.metric, title=None) if running else Text("")
        header = Table.grid()
        header.add_row(bar, head)
        waiting = [t for t in snapshot.trials if t.pending_reason]
        wait_line = Text(f"{len(waiting)} trial(s) waiting: {waiting[0].pending_reason}", style="yellow") if waiting else Text("")
        return Group(header, states, best_line, wait_line, table)


def trials_table(trials: list[TrialRecord], metric: str, title: str | None = "Trials") -> Table:
    table = Table(title=title, show_lines=False, header_style="bold")
    names = sorted({k for t in trials for k in t.config})
    table.add_column("trial")
    table.add_column("state")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("iter", justify="right")
    table.add_column(metric, justify="right")
    for t in trials:
        style = STATE_STYLES.get(t.state)
        table.add_row(t.id, t.state, *[_fmt(t.config.get(n, "")) for n in names], str(t.iteration),
                      _fmt(t.metric) if t.metric is not None else "-", style=style)
    return table


def print_outcome(console: Console, outcome: Any) -> None:
    """The final table (best first) and the best trial."""
    snapshot: Snapshot = outcome.snapshot
    ordered = sorted(snapshot.trials, key=lambda t: best_key(t, snapshot.mode))
    console.print(trials_table(ordered, snapshot.metric, title=f"Trials ({summary_line(snapshot)})"))
    for text, ids in snapshot.errors():
        console.print(f"[red]Failed[/] {len(ids)} trial(s) ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''}): {text}",
                      highlight=False)
        example = next(t for t in snapshot.trials if t.id == ids[0])
        for line in (example.error or {}).get("traceback", [])[-6:]:
            console.print(f"    {line}", highlight=False, markup=False)
    best = outcome.best
    if best is not None:
        console.print(f"[bold green]Best trial[/] {best.id}: {snapshot.metric} = {_fmt(best.metric)} "
                      f"after {best.iteration} iteration(s)")
        console.print(f"  config: {_config(best.config)}", highlight=False)
        console.print(f"  checkpoint: {best.checkpoint or '(none)'}", highlight=False)
    console.print(f"Results: {outcome.results_uri}", highlight=False)
