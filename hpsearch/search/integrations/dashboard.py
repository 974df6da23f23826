"""`hpsearch dashboard RUN`: optuna-dashboard on a run's Optuna study (`optuna.db`), and the
facts of hpsearch that each Optuna trial carries as user attributes for its tables.

The dashboard opens the SQLite file read-only and refuses every request that would change the
study (optuna-dashboard can delete studies, tell trials and edit notes), so it can watch a
search while the search writes the study. optuna-dashboard is an optional extra
(`pip install 'hpsearch[dashboard]'`), imported only when the verb runs.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import quote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from hpsearch.rundir import EXPERIMENT_FILE, OPTUNA_DB, runs_inside
from hpsearch.search.errors import ExperimentError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
INSTALL_HINT = "pip install 'hpsearch[dashboard]'"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def study_db(run_dir: str | Path) -> Path:
    """The run directory's optuna.db; ExperimentError saying what to do when `run_dir` is no
    run directory or its search has not created the study yet."""
    path = Path(run_dir)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise ExperimentError(f"{path} {what}; pass a run directory, e.g. runs/demo-<date>-<time>")
    if not (path / EXPERIMENT_FILE).is_file():
        listed = runs_inside(path, OPTUNA_DB)
        if listed:
            raise ExperimentError(
                f"{path} holds run directories, it is not one; pick one: {listed}"
            )
        raise ExperimentError(
            f"{path} is not a run directory of hpsearch (no {EXPERIMENT_FILE}); pass the folder "
            "that `hpsearch run` printed, e.g. runs/demo-<date>-<time>"
        )
    db = path / OPTUNA_DB
    if not db.is_file():
        raise ExperimentError(
            f"{path} has no {OPTUNA_DB}: its search has not started its first trial yet. Wait "
            f"for it, or start the search with `hpsearch resume {path}`"
        )
    return db


def storage_url(db: Path) -> str:
    """An SQLAlchemy URL that opens `db` read-only (SQLite's URI form, mode=ro)."""

    return f"sqlite:///file:{quote(str(db.resolve()))}?mode=ro&uri=true"


def read_only(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """The WSGI app `app`, answering 405 to every request that could change the study."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() in _READ_METHODS:
            return app(environ, start_response)
        body = json.dumps(
            {"reason": "hpsearch dashboard is read-only: the search owns the study"}
        ).encode()
        start_response(
            "405 Method Not Allowed",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return guarded


def dashboard_app(db: Path) -> Callable[..., Iterable[bytes]]:
    """optuna-dashboard's WSGI app on `db`, read-only; ExperimentError when it is missing."""
    try:
        # optional extra: hpsearch[dashboard]
        import optuna_dashboard
        from optuna.storages import RDBStorage
    except ImportError as e:
        raise ExperimentError(
            f"optuna-dashboard is not installed ({e}); install it with: {INSTALL_HINT}"
        ) from e
    # skip_*: a read-only file cannot be migrated or given tables (as optuna-dashboard's CLI)
    storage = RDBStorage(storage_url(db), skip_compatibility_check=True, skip_table_creation=True)
    return read_only(optuna_dashboard.wsgi(storage))


def url_of(host: str, port: int) -> str:
    shown = host if host not in ("", "0.0.0.0", "::") else "localhost"
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/dashboard/"


def serve(
    run_dir: str | Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard of `run_dir` on host:port until Ctrl-C or SIGTERM (port 0: any free
    port; the announced URL has the one chosen)."""

    say = announce or (lambda line: print(line, flush=True))  # flushed: a pipe reads it now
    app = dashboard_app(study_db(run_dir))

    class Server(ThreadingMixIn, WSGIServer):  # as optuna-dashboard's own CLI
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass  # the frontend polls every few seconds: no line per request

    try:
        server = make_server(host, port, app, server_class=Server, handler_class=QuietHandler)
    except OSError as e:
        raise ExperimentError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); choose another with "
            "--port N (--port 0: any free port) or --host H"
        ) from e

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a service manager's stop ends it like Ctrl-C
    say(f"optuna-dashboard on {Path(run_dir) / OPTUNA_DB} (read-only)")
    say(f"open {url_of(host, server.server_port)}  (Ctrl-C to stop)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        say(
            f"warning: listening on {host}: whoever can reach this machine can read the study "
            f"(from elsewhere: {url_of(socket.gethostname(), server.server_port)})"
        )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        say("dashboard stopped")
    finally:
        server.server_close()
