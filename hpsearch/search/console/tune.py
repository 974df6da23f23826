"""Ray Tune's side of the console (`search.console.printer`): the progress reporter of every search and
k-fold run, pickled with Tune's state, which reads the console level when it prints."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

from ray.tune import ProgressReporter

from hpsearch.search.console import printer as console


class ConsoleReporter(ProgressReporter):
    """Tune's progress reporter for every console level: at -v it is `table` (Tune's table);
    otherwise it prints the finished trials' lines and the summary of `search.console.printer`.

    `metric`/`mode`: the objective; `epochs`: the budget that tells completed from stopped
    trials (None: none are stopped early)."""

    def __init__(
        self,
        table: ProgressReporter,
        *,
        metric: str,
        mode: str,
        epochs: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table = table
        self._metric, self._mode, self._epochs = metric, mode, epochs
        self._clock = clock
        self._total: int | None = None
        self._start: float | None = None
        self._finished: dict[str, str] | None = None  # trial id -> the final state it showed
        self._last_state: tuple | None = None
        self._last_summary = -math.inf
        self._summary_shown = False  # a terminal's summary line is on screen
        self._pending: tuple[list[str], list[str], str | None] = ([], [], None)

    def setup(self, start_time=None, total_samples=None, metric=None, mode=None, **kwargs):
        self._table.setup(
            start_time=start_time, total_samples=total_samples, metric=metric, mode=mode, **kwargs
        )
        self._total = total_samples

    def should_report(self, trials: list, done: bool = False) -> bool:
        if console.level() == "verbose":
            return self._table.should_report(trials, done)
        now = self._clock()
        if self._start is None:
            self._start = now
        first = self._finished is None
        if first:
            self._finished = {}
        out, err = [], []
        for trial in trials:
            if (
                trial.status not in console.FINISHED
                or self._finished.get(trial.trial_id) == trial.status
            ):
                continue
            self._finished[trial.trial_id] = trial.status
            if first:  # finished before a resume: counted, not shown again
                continue
            outcome = console.trial_outcome(trial, self._metric, self._mode, self._epochs)
            if outcome is None:
                continue
            line = console.format_trial(outcome, self._metric)
            if outcome.status == "error":
                err.append(line)
            elif console.level() != "quiet":
                out.append(line)
        summary = None
        if console.level() != "quiet":
            tty = console.isatty(sys.stdout)
            # on a terminal the summary line comes back, up to date, below new lines
            force = done or (tty and bool(out or err))
            summary = self._summary(trials, now, force=force, tty=tty)
        self._pending = (out, err, summary)
        return bool(out or err or summary)

    def _summary(self, trials: list, now: float, *, force: bool, tty: bool) -> str | None:
        finished = sum(t.status in console.FINISHED for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        epochs = sum(int((t.last_result or {}).get("epoch") or 0) for t in trials)
        best = None
        for t in trials:
            value = console.best_value(t, self._metric, self._mode)
            if value is not None and (
                best is None or (value > best[0] if self._mode == "max" else value < best[0])
            ):
                best = (value, t.trial_id)
        state = (finished, running, epochs, best)
        interval = console.TERMINAL_REFRESH_S if tty else console.SUMMARY_INTERVAL_S
        due = now - self._last_summary >= interval
        if not force and not (due and (state != self._last_state or tty)):
            return None
        self._last_state, self._last_summary = state, now
        return console.format_summary(
            finished=finished,
            total=max(self._total or 0, len(trials)),
            running=running,
            metric=self._metric,
            best=best,
            elapsed=now - self._start,
        )

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        if console.level() == "verbose":
            self._table.report(trials, done, *sys_info)
            return
        out, err, summary = self._pending
        self._pending = ([], [], None)
        stdout, stderr = sys.stdout, sys.stderr
        tty = console.isatty(stdout)
        if tty and self._summary_shown:
            stdout.write("\r\x1b[K")  # the summary line gives way to what comes next
            self._summary_shown = False
        for line in out:
            stdout.write(line + "\n")
        stdout.flush()
        for line in err:
            stderr.write(line + "\n")
        stderr.flush()
        if summary is not None:
            if tty and not done:
                stdout.write(summary)
                self._summary_shown = True
            else:
                stdout.write(summary + "\n")
            stdout.flush()
