"""Local multi-node Ray clusters for the cluster drills.

Every node is Ray's own CLI, as on a real cluster: `ray start --head --block` and
`ray start --address HEAD --block`, on 127.0.0.1, each in a session of its own, with token
authentication on (a token of the drill's own, not the user's ~/.ray/auth_token). The drills
run in these processes and in drivers started from the test, never in the pytest process, which
may hold the test session's Ray instance. Every process a drill starts, and every process Ray
starts for it, carries a marker in its environment; teardown kills exactly those (`ray stop`
would also stop every other Ray instance on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the environment's `ray` and `hpsearch` scripts
MARKER = "HPSEARCH_CLUSTER_DRILL"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_ids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # state ppid pgrp session


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class LocalCluster:
    """A Ray cluster of `ray start` processes on this machine. Use as a context manager."""

    def __init__(self, *, dashboard: bool = False, object_store_mb: int = 200) -> None:
        # Short: Ray's socket paths under the temp dir must stay below 108 characters.
        self.root = Path(tempfile.mkdtemp(prefix="hpc-"))
        self.dashboard = dashboard
        self.object_store_mb = object_store_mb
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        token_file = self.root / "auth_token"
        token_file.write_text(secrets.token_hex(32))
        self._marker = f"{MARKER}={self.root.name}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(token_file),
                "RAY_USAGE_STATS_ENABLED": "0",
                # A node that stops answering is declared dead within a few seconds (Ray's
                # defaults take about 30 s, longer than a drill's search).
                "RAY_health_check_initial_delay_ms": "1000",
                "RAY_health_check_period_ms": "1000",
                "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3",
                "PYTHONUNBUFFERED": "1",
                MARKER: self.root.name,
            }
        )
        self.nodes: list[subprocess.Popen] = []
        self._others: list[subprocess.Popen] = []  # drivers and clients started by popen

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _launch(self, args: list[str], name: str, num_cpus: int) -> subprocess.Popen:
        cmd = [
            str(BIN / "ray"),
            "start",
            *args,
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            # Every node of this machine needs ports of its own.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
            "--include-log-monitor=false",  # one process less per node; nobody streams logs
        ]
        with open(self.root / f"{name}.log", "w") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )
        proc.name = name
        self.nodes.append(proc)
        return proc

    def wait_started(self, *nodes: subprocess.Popen, timeout: float = 120) -> None:
        """Until each node's `ray start` has started all its processes and blocks."""
        deadline = time.monotonic() + timeout
        for node in nodes:
            log = self.root / f"{node.name}.log"
            while "will now block forever" not in log.read_text(errors="replace"):
                if node.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start ({node.name}) failed:\n{self.logs()}")
                time.sleep(0.2)

    def start(self, *, workers: int = 1, num_cpus: int = 1) -> None:
        """The head, then the workers as soon as the head's GCS accepts connections."""
        dashboard = (
            [
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
            ]
            if self.dashboard
            else ["--include-dashboard=false"]
        )
        args = ["--head", f"--port={self.gcs_port}", f"--temp-dir={self.root}", *dashboard]
        head = self._launch(args, "head", num_cpus)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.gcs_port), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start (head) failed:\n{self.logs()}") from None
                time.sleep(0.2)
        started = [head] + [self.add_worker(num_cpus=num_cpus, wait=False) for _ in range(workers)]
        self.wait_started(*started)

    @property
    def head(self) -> subprocess.Popen:
        return self.nodes[0]

    def add_worker(self, *, num_cpus: int = 1, wait: bool = True) -> subprocess.Popen:
        name = f"node{len(self.nodes)}"
        # A temp dir per node, as on separate machines: nodes sharing one would also share the
        # unpacked job working dirs, and one node's cleanup would delete another's.
        args = [f"--address={self.address}", f"--temp-dir={self.root / name}"]
        node = self._launch(args, name, num_cpus)
        if wait:
            self.wait_started(node)
        return node

    def node_of_pid(self, pid: int) -> subprocess.Popen | None:
        """The node (its `ray start` process) whose raylet started process `pid`."""
        session = _session_of(pid)
        return next((n for n in self.nodes if n.pid == session), None)

    def kill_node(self, node: subprocess.Popen) -> None:
        """The machine dies: every process of the node at once, no draining."""
        _kill([pid for pid in _proc_ids() if _session_of(pid) == node.pid])
        node.wait()

    def run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        """A command in the drill's environment (auth token, PATH), e.g. `ray job submit`."""
        return subprocess.run(args, env=self.env, capture_output=True, text=True, **kwargs)

    def popen(self, args: list[str], log: Path, **kwargs) -> subprocess.Popen:
        with open(log, "w") as out:
            proc = subprocess.Popen(
                args,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )
        self._others.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.root.glob("*.log"))
        )

    def shutdown(self) -> None:
        marker = self._marker.encode()
        for _ in range(3):  # processes forked while the first sweep ran
            pids = [p for p in _proc_ids() if p != os.getpid() and _has_marker(p, marker)]
            if not pids:
                break
            _kill(pids)
            time.sleep(0.3)
        for proc in self.nodes + self._others:
            proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _has_dashboard() -> bool:
    try:  # what Ray itself imports to tell ray[default] from a minimal install
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def two_nodes():
    """A head and one worker, one CPU each, for one module's drills. The head runs the
    dashboard, for Ray Jobs, where this Ray has it (ray[default])."""
    if not Path("/proc").is_dir():
        pytest.skip("the drills find the processes they started in Linux's /proc")
    cluster = LocalCluster(dashboard=_has_dashboard())
    try:
        cluster.start(workers=1)
        yield cluster
    finally:
        cluster.shutdown()
