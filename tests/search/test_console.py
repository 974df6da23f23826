"""The console of a running search (search.console, search.console_tune): the reporter driven
with fake Tune trials, the -v / -q flags, and the logging they set. (A real search's output is
checked in test_tracking.py, which shares one tiny search with the tracking checks.)"""

from __future__ import annotations

import io
import logging
import pickle
import re
import sys

import pandas as pd
import pytest

from hpsearch.search import cli
from hpsearch.search.console import printer as console
from hpsearch.search.console.tune import ConsoleReporter


class FakeTrial:
    """What the reporter reads of Tune's Trial (hashable, like Trial)."""

    def __init__(self, trial_id, status="PENDING", last_result=None, best=None, **attrs):
        self.trial_id = trial_id
        self.status = status
        self.last_result = last_result or {}
        # Tune's running max/min of every numeric metric over the trial's reports
        self.metric_analysis = (
            {"val_accuracy": {"max": best, "min": best}} if best is not None else {}
        )
        self.error_file = attrs.get("error_file")
        self.path = attrs.get("path")


class FakeTable:
    """Stands in for Tune's CLIReporter: records what the reporter hands it."""

    def __init__(self):
        self.calls = []

    def setup(self, **kwargs):
        self.calls.append(("setup", kwargs["total_samples"]))

    def should_report(self, trials, done=False):
        self.calls.append(("should_report", len(trials), done))
        return True

    def report(self, trials, done, *sys_info):
        self.calls.append(("report", len(trials), done))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_reporter(clock=None, epochs=2, total=5, mode="max"):
    r = ConsoleReporter(
        FakeTable(), metric="val_accuracy", mode=mode, epochs=epochs, clock=clock or Clock()
    )
    r.setup(start_time=0.0, total_samples=total, metric="val_accuracy", mode=mode)
    return r


def step(reporter, trials, done=False):
    if reporter.should_report(trials, done=done):
        reporter.report(trials, done)


def running(trial, epoch, best):
    trial.status = "RUNNING"
    trial.last_result = {"epoch": epoch, "status": "running", "time_total_s": 3.0 * epoch}
    trial.metric_analysis = {"val_accuracy": {"max": best, "min": best}}


TRIAL_LINE = re.compile(r"^trial (\w+)\s+(\w+)\s+val_accuracy (\S+)\s+(\d+) epochs?\s+(-|[\d.]+ s)")


def trial_lines(text):
    return [TRIAL_LINE.match(line).groups() for line in text.splitlines() if TRIAL_LINE.match(line)]


def test_one_line_per_finished_trial_with_status_best_epochs_seconds(capsys, tmp_path):
    error_txt = tmp_path / "error.txt"
    error_txt.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: out of memory\n")
    trials = [FakeTrial(f"t{i}") for i in range(5)]
    r = make_reporter()
    step(r, trials)
    for t in trials:
        running(t, 1, 0.5)
    step(r, trials)
    # t0 trains its budget, t1 is stopped early, t2 is infeasible, t3 diverges in its first
    # epoch (its only score is the stand-in worst), t4 errs after an epoch
    trials[0].status, trials[0].last_result = "TERMINATED", {"epoch": 2, "time_total_s": 6.04}
    trials[0].metric_analysis = {"val_accuracy": {"max": 0.8125, "min": 0.5}}
    trials[1].status = "TERMINATED"
    trials[2].status = "TERMINATED"
    trials[2].last_result = {
        "epoch": 0,
        "status": "infeasible",
        "val_accuracy": 0.0,
        "reason": "conv3: feature map 0x0",
    }
    trials[2].metric_analysis = {"val_accuracy": {"max": 0.0, "min": 0.0}}
    trials[3].status = "TERMINATED"
    trials[3].last_result = {"epoch": 1, "status": "diverged", "reason": "non-finite loss"}
    trials[3].metric_analysis = {"val_accuracy": {"max": 0.0, "min": 0.0}}
    trials[4].status, trials[4].error_file, trials[4].path = "ERROR", str(error_txt), "/runs/r/t4"
    step(r, trials)
    step(r, trials)  # nothing new: no line again
    out, err = capsys.readouterr()
    assert trial_lines(out) == [
        ("t0", "completed", "0.8125", "2", "6.0 s"),
        ("t1", "stopped", "0.5000", "1", "3.0 s"),
        ("t2", "infeasible", "-", "0", "-"),
        ("t3", "diverged", "-", "1", "-"),
    ]
    assert "(conv3: feature map 0x0)" in out and "(non-finite loss)" in out
    # an error is reported on stderr, with its message and where its traceback is
    assert trial_lines(err) == [("t4", "error", "0.5000", "1", "3.0 s")]
    assert "RuntimeError: out of memory; see /runs/r/t4/error.txt" in err
    assert "t4" not in out


def test_the_summary_is_printed_when_something_changed_at_most_every_interval(capsys):
    clock = Clock()
    a, b = FakeTrial("a"), FakeTrial("b")
    r = make_reporter(clock, total=2)

    def after(seconds, done=False):
        clock.now += seconds
        step(r, [a, b], done=done)
        return capsys.readouterr().out

    assert after(0) == "[0s] 0/2 trials finished, 0 running, best val_accuracy -\n"
    running(a, 1, 0.5)
    assert after(5) == ""  # changed, but 5 s after the last summary: not yet
    assert after(console.SUMMARY_INTERVAL_S) == (
        "[20s] 0/2 trials finished, 1 running, best val_accuracy 0.5000 (trial a)\n"
    )
    assert after(100) == ""  # nothing changed: nothing printed, however long it has been
    running(b, 1, 0.75)
    a.status, a.last_result = "TERMINATED", {"epoch": 2, "time_total_s": 7.0}
    assert after(1).splitlines() == [
        "trial a  completed   val_accuracy 0.5000  2 epochs  7.0 s",
        "[2m01s] 1/2 trials finished, 1 running, best val_accuracy 0.7500 (trial b)",
    ]
    b.status, b.last_result = "TERMINATED", {"epoch": 2, "time_total_s": 8.0}
    # b's line at once; the summary waits for its interval...
    assert after(1) == "trial b  completed   val_accuracy 0.7500  2 epochs  8.0 s\n"
    # ...but the last one always comes
    assert after(1, done=True) == (
        "[2m03s] 2/2 trials finished, 0 running, best val_accuracy 0.7500 (trial b)\n"
    )


def test_the_best_trial_follows_the_mode():
    lo, hi = FakeTrial("lo", best=0.2), FakeTrial("hi", best=0.9)
    for mode, best in (("min", "0.2000 (trial lo)"), ("max", "0.9000 (trial hi)")):
        r = make_reporter(mode=mode)
        assert r.should_report([lo, hi])
        assert r._pending[2].endswith(f"best val_accuracy {best}")


def test_trials_finished_before_a_resume_are_counted_not_shown_again(capsys):
    old = FakeTrial("old", "TERMINATED", {"epoch": 2, "time_total_s": 4.0}, best=0.6)
    new = FakeTrial("new")
    r = make_reporter(total=2)
    step(r, [old, new])
    running(new, 2, 0.7)
    new.status = "TERMINATED"
    step(r, [old, new], done=True)
    out = capsys.readouterr().out
    assert [line[0] for line in trial_lines(out)] == ["new"]
    assert out.splitlines()[-1].endswith(
        "2/2 trials finished, 0 running, best val_accuracy 0.7000 (trial new)"
    )


def test_quiet_shows_only_errors_on_stderr(capsys):
    ok, bad = FakeTrial("ok"), FakeTrial("bad")
    r = make_reporter()
    with console.use_level("quiet"):
        step(r, [ok, bad])
        running(ok, 2, 0.9)
        running(bad, 1, 0.4)
        ok.status, bad.status = "TERMINATED", "ERROR"
        step(r, [ok, bad], done=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert [line[:2] for line in trial_lines(err)] == [("bad", "error")]


def test_verbose_is_tunes_table(capsys):
    r = make_reporter()
    trials = [FakeTrial("a", "RUNNING")]
    with console.use_level("verbose"):
        step(r, trials, done=True)
    assert r._table.calls == [
        ("setup", 5),
        ("should_report", 1, True),
        ("report", 1, True),
    ]
    assert capsys.readouterr().out == ""


def test_a_terminal_redraws_the_summary_in_place_below_new_lines(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    clock = Clock()
    a = FakeTrial("a")
    r = make_reporter(clock, total=1)
    step(r, [a])
    running(a, 1, 0.5)
    clock.now += console.TERMINAL_REFRESH_S
    step(r, [a])
    a.status, a.last_result = "TERMINATED", {"epoch": 2, "time_total_s": 2.0}
    step(r, [a])  # within the refresh interval, yet the summary follows the new line
    clock.now += 1
    step(r, [a], done=True)
    clear = "\r\x1b[K"
    assert term.getvalue() == (
        "[0s] 0/1 trials finished, 0 running, best val_accuracy -"
        f"{clear}[1s] 0/1 trials finished, 1 running, best val_accuracy 0.5000 (trial a)"
        f"{clear}trial a  completed   val_accuracy 0.5000  2 epochs  2.0 s\n"
        "[1s] 1/1 trials finished, 0 running, best val_accuracy 0.5000 (trial a)"
        f"{clear}[2s] 1/1 trials finished, 0 running, best val_accuracy 0.5000 (trial a)\n"
    )


def test_the_pickled_reporter_reads_the_level_when_it_prints(capsys):
    """Tune pickles the reporter into tuner.pkl; `resume -v` must still get the table."""
    r = pickle.loads(pickle.dumps(make_reporter(epochs=None)))
    t = FakeTrial("a", "TERMINATED", {"epoch": 1, "time_total_s": 1.0}, best=0.5)
    step(r, [FakeTrial("a")])
    with console.use_level("verbose"):
        step(r, [t])
    assert r._table.calls[-1] == ("report", 1, False)
    step(r, [t])
    # epochs=None (k-fold: no early stopping): a trial that ends by itself completed
    assert [line[:2] for line in trial_lines(capsys.readouterr().out)] == [("a", "completed")]


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["run", "x.yaml"], "normal"),
        (["run", "x.yaml", "-v"], "verbose"),
        (["run", "x.yaml", "--quiet"], "quiet"),
        (["resume", "runs/r", "-q"], "quiet"),
        (["kfold", "runs/r", "--verbose"], "verbose"),
        (["demo", "-q"], "quiet"),
    ],
)
def test_console_flags(argv, level):
    assert cli.build_parser().parse_args(argv).console == level


@pytest.mark.parametrize("verb", [["run", "x.yaml"], ["resume", "r"], ["kfold", "r"], ["demo"]])
def test_verbose_and_quiet_exclude_each_other(verb, capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args([*verb, "-v", "-q"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_main_sets_the_level_for_the_verb(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_cmd_run", lambda args: seen.append(console.level()) or 0)
    assert cli.main(["run", "x.yaml", "-q"]) == 0
    assert cli.main(["run", "x.yaml"]) == 0
    assert seen == ["quiet", "normal"] and console.level() == "normal"


def test_quiet_finish_prints_only_where_the_results_are(capsys, tmp_path):
    tables = {"trials": pd.DataFrame({"trial_id": ["a"], "status": ["completed"], "epochs": [2]})}
    with console.use_level("quiet"):
        assert cli._finish(tmp_path, tables, False, exp=None) == 0
        assert cli._finish(tmp_path, tables, True, exp=None) == 130
    assert capsys.readouterr().out.splitlines() == [
        f"results: {tmp_path}",
        f"results: {tmp_path}",
        f"the search did not finish; continue it with: hpsearch resume {tmp_path}",
    ]


@pytest.mark.parametrize("level", ["quiet", "normal"])
def test_a_search_in_which_no_trial_finished_an_epoch_exits_1(capsys, tmp_path, level):
    """It says why on stderr (so -q keeps it): the most common error and where the trials'
    error files are."""
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c"],
            "status": ["error", "error", "infeasible"],
            "epochs": [0, 0, 0],
            "error": ["OSError: broken.pt", "OSError: broken.pt", "feature map vanishes"],
        }
    )
    with console.use_level(level):
        assert cli._finish(tmp_path, {"trials": trials}, False, exp=None) == 1
    out, err = capsys.readouterr()
    assert "none of its 3 trial(s) finished an epoch" in err
    assert "most common error (2 of 3 trials): OSError: broken.pt" in err
    assert f"{tmp_path}/trial_a/error.txt" in err
    assert out.splitlines() == [f"results: {tmp_path}"]


@pytest.mark.parametrize(
    ("level", "ray_level", "optuna_level", "start"),
    [
        ("normal", logging.WARNING, logging.WARNING, logging.ERROR),
        ("quiet", logging.ERROR, logging.ERROR, logging.ERROR),
        ("verbose", logging.DEBUG, logging.DEBUG, logging.INFO),  # left as configured
    ],
)
def test_library_logs_follow_the_level(level, ray_level, optuna_level, start):
    import optuna

    ray_logger = logging.getLogger("ray")
    before = ray_logger.level, optuna.logging.get_verbosity()
    ray_logger.setLevel(logging.DEBUG)
    optuna.logging.set_verbosity(logging.DEBUG)
    try:
        with console.use_level(level):
            assert console.ray_start_level() == start
            with console.library_logs():
                assert ray_logger.level == ray_level
                assert optuna.logging.get_verbosity() == optuna_level
        assert (ray_logger.level, optuna.logging.get_verbosity()) == (logging.DEBUG,) * 2
    finally:
        ray_logger.setLevel(before[0])
        optuna.logging.set_verbosity(before[1])


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match="quiet"), console.use_level("loud"):
        pass
