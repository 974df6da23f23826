"""`hpsearch dashboard RUN` and the user attributes each Optuna trial carries for it: the
searcher driven without Ray, the read-only dashboard app on a hand-made study, the verb's
errors, and the dashboard of a real (tiny) search read through optuna-dashboard's HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from ray import tune

from hpsearch.search.cli import main
from hpsearch.search.driver.searcher import ResumableOptunaSearch
from hpsearch.search.integrations.dashboard import dashboard_app, storage_url

RUN_DIR = "/runs/r1"
FACTS = {"params": 51683, "macs": 1175232, "node_id": "node-a"}


def _searcher() -> ResumableOptunaSearch:
    return ResumableOptunaSearch(
        space={"lr": tune.loguniform(1e-3, 1e-1)},
        metric="val_accuracy",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        max_epochs=3,
        run_dir=RUN_DIR,
    )


def _report(searcher, trial_id: str, epochs: int, status: str = "running", **extra) -> dict:
    result = {}
    for e in range(1, epochs + 1):
        result = {"val_accuracy": 0.2 * e, "training_iteration": e, "epoch": e, "status": status}
        result.update({**FACTS, **extra})
        searcher.on_trial_result(trial_id, result)
    return result


def _attrs(searcher) -> dict[int, tuple[TrialState, dict]]:
    return {t.number: (t.state, t.user_attrs) for t in searcher._ot_study.get_trials()}


def test_each_trial_carries_how_it_ended_and_its_model_and_node():
    s = _searcher()
    s.suggest("full")
    last = _report(s, "full", 3)
    # while it trains, the live dashboard already shows what it is and where it runs
    state, attrs = _attrs(s)[0]
    assert state == TrialState.RUNNING
    assert attrs == {**FACTS, "status": "running", "epoch": 3, "run_dir": RUN_DIR}
    s.on_trial_complete("full", result=last)

    s.suggest("asha")
    s.on_trial_complete("asha", result=_report(s, "asha", 1))

    s.suggest("diverged")
    bad = _report(s, "diverged", 2, "diverged", reason="non-finite training loss at step 3")
    s.on_trial_complete("diverged", result=bad)

    s.suggest("infeasible")
    infeasible = {"val_accuracy": 0.0, "status": "infeasible", "reason": "pool1: 0x0", "epoch": 0}
    s.on_trial_result("infeasible", infeasible)
    s.on_trial_complete("infeasible", result=infeasible)

    s.suggest("crashed")
    _report(s, "crashed", 2, node_id="node-b")
    s.on_trial_complete("crashed", error=True)  # as Tune does: no result

    trials = _attrs(s)
    common = {"run_dir": RUN_DIR}
    assert trials[0] == (
        TrialState.COMPLETE,
        {**FACTS, **common, "status": "completed", "epoch": 3},
    )
    assert trials[1] == (TrialState.PRUNED, {**FACTS, **common, "status": "stopped", "epoch": 1})
    assert trials[2] == (
        TrialState.COMPLETE,
        {**FACTS, **common, "status": "diverged", "epoch": 2, "error": bad["reason"]},
    )
    assert trials[3] == (
        TrialState.COMPLETE,
        {**common, "status": "infeasible", "epoch": 0, "error": "pool1: 0x0"},
    )
    state, attrs = trials[4]
    assert state == TrialState.FAIL
    assert attrs == {
        **FACTS,
        **common,
        "node_id": "node-b",  # the last report's node
        "status": "error",
        "epoch": 2,
        "error": f"the trial raised an exception: see {RUN_DIR}/trial_crashed/error.txt",
    }
    assert s._user_attrs == {}  # nothing kept for trials that ended


def test_attributes_are_written_once_per_change(monkeypatch):
    writes = []
    original = optuna.trial.Trial.set_user_attr
    monkeypatch.setattr(
        optuna.trial.Trial,
        "set_user_attr",
        lambda self, key, value: (writes.append(key), original(self, key, value)),
    )
    s = _searcher()
    s.suggest("a")
    last = _report(s, "a", 3)
    # the first report sets all six; then only the epoch changes; the end changes the status
    assert sorted(writes) == sorted([*FACTS, "status", "epoch", "run_dir", "epoch", "epoch"])
    s.on_trial_complete("a", result=last)
    assert writes[-1] == "status" and len(writes) == 9


def test_a_searcher_pickled_before_the_attributes_existed_still_runs():
    """`resume` of an older run unpickles a searcher without the new fields."""
    s = _searcher()
    del s.__dict__["_user_attrs"], s.__dict__["_run_dir"]
    s.suggest("old")
    s.on_trial_complete("old", result=_report(s, "old", 3))
    _, attrs = _attrs(s)[0]
    assert attrs["status"] == "completed" and "run_dir" not in attrs


def _study_run(root: Path, trials: int = 2) -> tuple[Path, optuna.Study]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "experiment.yaml").write_text(yaml.safe_dump({"name": "hand"}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="hand", storage=f"sqlite:///{root / 'optuna.db'}")
    for i in range(trials):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.001, 0.1)})
        trial.set_user_attr("status", "completed")
        study.tell(trial, 0.1 * i)
    return root, study


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def _trials(base: str, study_id: int) -> list[dict]:
    return _get(f"{base}/api/studies/{study_id}")["trials"]


def test_the_dashboard_reads_a_study_while_it_grows_and_changes_nothing(tmp_path):
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    run, study = _study_run(tmp_path / "run")

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("127.0.0.1", 0, dashboard_app(run / "optuna.db"), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        (summary,) = _get(f"{base}/api/studies")["study_summaries"]
        sid = summary["study_id"]
        assert summary["study_name"] == "hand" and len(_trials(base, sid)) == 2
        # optuna-dashboard could delete the study or tell a trial: refused
        for method, path in [("DELETE", f"/api/studies/{sid}"), ("POST", "/api/studies")]:
            request = urllib.request.Request(base + path, data=b"{}", method=method)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 405 and b"read-only" in refused.value.read()
        # the search goes on writing the study; the dashboard shows the new trial
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.001, 0.1)})
        study.tell(trial, 0.5)
        deadline = time.monotonic() + 30  # optuna-dashboard re-reads small studies every 2 s
        while len(_trials(base, sid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(_trials(base, sid)) == 3
    finally:
        server.shutdown()
        server.server_close()
    assert len(study.trials) == 3  # nothing deleted
    # and the file itself is opened read-only
    readonly = optuna.storages.RDBStorage(
        storage_url(run / "optuna.db"), skip_compatibility_check=True, skip_table_creation=True
    )
    with pytest.raises(optuna.exceptions.StorageInternalError) as write:
        readonly.create_new_study([optuna.study.StudyDirection.MINIMIZE], "other")
    assert "readonly database" in str(write.value.__cause__)


def test_the_dashboard_refuses_what_is_no_run_and_says_what_to_do(tmp_path, capsys):
    def refused(path: Path) -> str:
        assert main(["dashboard", str(path), "--port", "0"]) == 2
        return capsys.readouterr().err

    assert "does not exist" in refused(tmp_path / "missing")
    assert "not a run directory" in refused(tmp_path)  # empty: no experiment.yaml
    started = tmp_path / "runs" / "new"
    started.mkdir(parents=True)
    (started / "experiment.yaml").write_text("name: new\n")
    err = refused(started)
    assert "has no optuna.db" in err and f"hpsearch resume {started}" in err
    _study_run(tmp_path / "runs" / "done")
    err = refused(tmp_path / "runs")
    assert "holds run directories" in err and str(tmp_path / "runs" / "done") in err


def test_the_dashboard_says_how_to_install_optuna_dashboard(tmp_path, capsys, monkeypatch):
    run, _ = _study_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import fails as if absent
    assert main(["dashboard", str(run)]) == 2
    assert "pip install 'hpsearch[dashboard]'" in capsys.readouterr().err


def test_a_port_in_use_is_refused_with_what_to_change(tmp_path, capsys):
    run, _ = _study_run(tmp_path / "run")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(run), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--port" in err


def _wait_for_url(log: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("open http://"):
                return line.split()[1]
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"no URL within {timeout} s: {log.read_text()}")


@pytest.mark.slow
def test_the_dashboard_of_a_finished_search(ray_session, tmp_path, small_folder, cache_root):
    # one tiny search: two grid points, one trains an epoch, one is infeasible (no training)
    exp = {
        "name": "dash",
        "data": {"folder": str(small_folder), "image_size": 16, "cache": str(cache_root)},
        "search": {
            "algorithm": "grid",
            "num_trials": 2,
            "max_concurrent": 2,
            "space": {
                "arch": "FlatAlexNet",
                "width": 0.25,
                "strides": [[1, 1, 1], [8, 8, 8]],
                "mlp_layers": 0,
                "optimizer": {"sgd": {"lr": 0.05}},
            },
        },
        "scheduler": {"type": "none"},
        "train": {"epochs": 1, "batch_size": 16},
        "storage": str(tmp_path / "runs"),
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    assert main(["run", str(tmp_path / "exp.yaml"), "--name", "d1"]) == 0
    run_dir = tmp_path / "runs" / "d1"
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("status")
    assert sorted(trials.index) == ["completed", "infeasible"]

    log = tmp_path / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpsearch", "dashboard", str(run_dir), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = _wait_for_url(log, proc)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/dashboard/")
        base = url.removesuffix("/dashboard/")
        port = int(base.rsplit(":", 1)[1])
        (summary,) = _get(f"{base}/api/studies")["study_summaries"]
        assert summary["study_name"] == "dash"
        study = _get(f"{base}/api/studies/{summary['study_id']}")
        assert {"status", "params", "macs", "node_id", "run_dir"} <= {
            a["key"] for a in study["union_user_attrs"]
        }  # the trials table's user-attribute columns
        shown = study["trials"]
        assert len(shown) == 2 and {t["state"] for t in shown} == {"Complete"}
        by_status = {}
        for t in shown:
            attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
            by_status[attrs["status"]] = attrs
            assert attrs["run_dir"] == str(run_dir.resolve())
        assert set(by_status) == {"completed", "infeasible"}  # as trials.parquet says
        done, row = by_status["completed"], trials.loc["completed"]
        # (the table's columns are float: the infeasible trial has no model to count)
        assert (done["params"], done["macs"]) == (str(int(row["params"])), str(int(row["macs"])))
        assert done["node_id"] == row["node_id"] and done["epoch"] == "1"
        assert by_status["infeasible"]["error"] == trials.loc["infeasible", "error"]
        page = urllib.request.urlopen(url, timeout=30)
        assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        proc.terminate()
        rc = proc.wait(timeout=30)
    assert rc == 0 and "dashboard stopped" in log.read_text()
    with socket.socket() as probe:  # nothing listens there any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    with socket.socket() as again:  # and a new server can have the port
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
