"""What a running search prints. Three levels, chosen per command (`-v`, `-q`):

- normal (default): one line per finished trial (its status, the objective's best value, its
  epochs and seconds) and a one-line summary, refreshed in place on a terminal and otherwise
  printed when something changed, at most every SUMMARY_INTERVAL_S; Ray's and Optuna's
  warnings and errors during the search, not their start-up and progress messages.
- verbose: Ray Tune's progress table (CLIReporter) every 15 s and Ray's log messages.
- quiet: only errors (stderr) and, at the end, where the results are.

A trial that errs is always reported on stderr. The level is the process's, like logging's
configuration: the reporter Tune pickles into tuner.pkl (`search.console.tune`) reads it when it
prints, so `resume -v` shows the table of a run that was started without it. This module does
not import Ray: `search.driver.session` reads the level before Ray starts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpsearch.rundir import ERROR_FILE

LEVELS = ("quiet", "normal", "verbose")
SUMMARY_INTERVAL_S = 15.0  # between two summaries (not on a terminal: there it is redrawn)
TERMINAL_REFRESH_S = 1.0  # a terminal's summary line is redrawn this often (its clock moves)
FINISHED = ("TERMINATED", "ERROR")  # Tune's final trial states

_level = "normal"


def level() -> str:
    return _level


def is_quiet() -> bool:
    return _level == "quiet"


@contextmanager
def use_level(name: str) -> Iterator[None]:
    """The console level for the duration of the block."""
    global _level
    if name not in LEVELS:
        raise ValueError(f"console level {name!r}: use one of {LEVELS}")
    before, _level = _level, name
    try:
        yield
    finally:
        _level = before


def ray_start_level() -> int:
    """`ray.init`'s logging_level: Ray's start-up messages (they are in Ray's session logs
    too) reach the console only with -v."""
    return logging.INFO if _level == "verbose" else logging.ERROR


@contextmanager
def library_logs() -> Iterator[None]:
    """While a search runs: Ray's and Optuna's warnings and errors (only errors when quiet),
    not their info messages; with -v, whatever they are configured to show."""
    if _level == "verbose":
        yield
        return
    import optuna  # (it sets its own level when first imported: import it before setting)

    ray_logger = logging.getLogger("ray")
    ray_before, optuna_before = ray_logger.level, optuna.logging.get_verbosity()
    ray_logger.setLevel(logging.ERROR if _level == "quiet" else logging.WARNING)
    optuna.logging.set_verbosity(logging.ERROR if _level == "quiet" else logging.WARNING)
    try:
        yield
    finally:
        ray_logger.setLevel(ray_before)
        optuna.logging.set_verbosity(optuna_before)


@dataclass(frozen=True)
class TrialOutcome:
    """A finished trial as its console line shows it."""

    trial_id: str
    status: str  # completed, stopped, infeasible, diverged or error
    best: float | None  # the objective's best epoch value (None: no epoch finished)
    epochs: int
    seconds: float | None
    reason: str = ""  # why an infeasible, diverged, out-of-memory or errored trial ended


def best_value(trial: Any, metric: str, mode: str) -> float | None:
    """The objective's best value over the trial's finished epochs. An infeasible trial's
    report and a diverged or out-of-memory trial's last one carry a stand-in worst score, never
    better than a real one: only a trial that ended so in its first epoch has no value to show."""
    last = trial.last_result or {}
    if last.get("status") == "infeasible" or (
        last.get("status") in ("diverged", "oom") and (last.get("epoch") or 0) <= 1
    ):
        return None
    value = ((trial.metric_analysis or {}).get(metric) or {}).get(mode)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _error_reason(trial: Any) -> str:
    text = ""
    try:
        if trial.error_file:
            lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
            text = lines[-1].strip()[:200] if lines else ""
    except OSError:
        pass
    where = Path(trial.path, ERROR_FILE) if trial.path else None
    return "; ".join(p for p in (text, f"see {where}" if where else "") if p)


def trial_outcome(trial: Any, metric: str, mode: str, epochs: int | None) -> TrialOutcome | None:
    """What a finished trial's line says; None for a trial stopped before it reported (an
    interrupted search's pending trials). `epochs`: the budget a completed trial trained for
    (None: every trial that ends by itself completed, as without early stopping)."""
    last = trial.last_result or {}
    if trial.status == "ERROR":
        status, reason = "error", _error_reason(trial)
    elif not last:
        return None
    elif last.get("status") in ("infeasible", "diverged", "oom"):
        status, reason = last["status"], str(last.get("reason") or "")
    else:
        done = epochs is None or last.get("epoch", 0) >= epochs
        status, reason = ("completed" if done else "stopped"), ""
    return TrialOutcome(
        trial_id=trial.trial_id,
        status=status,
        best=best_value(trial, metric, mode),
        epochs=int(last.get("epoch") or 0),
        seconds=last.get("time_total_s"),
        reason=reason,
    )


def _value(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_trial(o: TrialOutcome, metric: str) -> str:
    seconds = "-" if o.seconds is None else f"{o.seconds:.1f} s"
    epochs = f"{o.epochs} epoch" + ("" if o.epochs == 1 else "s")
    line = f"trial {o.trial_id}  {o.status:<10}  {metric} {_value(o.best)}  {epochs}  {seconds}"
    return f"{line}  ({o.reason})" if o.reason else line


def format_elapsed(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_summary(
    *,
    finished: int,
    total: int,
    running: int,
    metric: str,
    best: tuple[float, str] | None,
    elapsed: float,
) -> str:
    shown = f"{best[0]:.4f} (trial {best[1]})" if best else "-"
    return (
        f"[{format_elapsed(elapsed)}] {finished}/{total} trials finished, {running} running, "
        f"best {metric} {shown}"
    )


def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
