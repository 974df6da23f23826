"""Where the GPUs of an experiment with `resources.gpus > 0` come from, checked before any
trial starts. Nothing trains on the CPU while the experiment asks for a GPU:

- On this machine (no `--address`; and `final`, and the same-init warm-up, which train in the
  driver): CUDA must work here (`trial.device.cuda_problem`), else ExperimentError (exit 2)
  with the reason and what to change, before any data is loaded or Ray is started.
- On a Ray cluster (`--address`): GPU workers often start only on demand, so a cluster without
  a GPU *now* is fine when its autoscaler can add one. Once joined, `check_cluster_gpus`
  refuses (exit 2) only a cluster that provably cannot get a GPU: no node type with a GPU in
  its autoscaling config, or no autoscaler at all (every node was started by hand with
  `ray start`, or a local Ray). When hpsearch cannot tell, it warns and the search starts: its
  trials wait for a GPU node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpsearch.search.errors import ExperimentError
from hpsearch.search.trial.device import cuda_problem

# The autoscaling config `ray up` writes on the head node, node types' resources filled in
# (`fillout_available_node_types_resources`). Ray Tune reads the same file to tell an
# autoscaling cluster (ray.tune.execution.cluster_info); a driver on the head finds it here.
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")

# What to change where CUDA does not work on this machine, by the verb that trains here.
LOCAL_FIXES = {
    "run": "On the command line: --set resources.gpus=0 trains on the CPU, or --address ADDR "
    "runs the trials on a Ray cluster with GPU workers",
    "validate": "On the command line: --set resources.gpus=0 trains on the CPU; for a run on a "
    "Ray cluster with GPU workers, validate it with --address ADDR",
    "resume": "Resume the run on a machine whose GPU CUDA can use, or on a Ray cluster with GPU "
    "workers (--address ADDR)",
    "kfold": "Run kfold on a machine whose GPU CUDA can use, or on a Ray cluster with GPU "
    "workers (--address ADDR)",
    "final": "Run final on a machine whose GPU CUDA can use, or train on this machine's CPU: "
    "hpsearch final RUN_DIR --cpu",
}


def check_local_gpu(gpus: float, address: str | None, verb: str) -> None:
    """With `gpus > 0` and no cluster to join, raise ExperimentError unless CUDA works here:
    the reason (torch's CUDA, the driver found, what to install) and what to change."""
    if gpus <= 0 or address:
        return
    problem = cuda_problem()
    if problem is not None:
        raise ExperimentError(
            f"resources.gpus is {gpus:g}, so every trial trains on a GPU (never on the CPU "
            f"instead), and {problem}. {LOCAL_FIXES[verb]}"
        )


@dataclass(frozen=True)
class GpuSupply:
    """The GPUs of the cluster Ray is connected to: how many there are now, whether its
    autoscaler can add some (None: cannot tell), and why hpsearch thinks so."""

    now: float
    can_add: bool | None
    why: str


def cluster_gpu_supply() -> GpuSupply:
    """What the connected Ray cluster has and can get, from the first source that knows:
    the cluster config an autoscaler reported to the GCS (where it does), the autoscaling
    config on this machine (a driver on a `ray up` head), then whether
    any node was started by an autoscaler at all."""
    # lazy: Ray (~0.3 s): `hpsearch validate` checks this machine's GPU without it
    import ray

    now = float(ray.cluster_resources().get("GPU", 0))
    for source in (_reported_cluster_config, _bootstrap_config, _hand_started_nodes):
        found = source()
        if found is not None:
            can_add, why = found
            return GpuSupply(now, can_add, why)
    return GpuSupply(
        now,
        None,
        "hpsearch cannot tell whether its autoscaler can add a GPU node (no autoscaling "
        f"config in {BOOTSTRAP_CONFIG} on this machine, none reported to Ray)",
    )


def check_cluster_gpus(gpus: float, log: Callable[[str], None] = print) -> None:
    """Joined to a cluster, with `gpus > 0`: nothing when it has a GPU now; a line when it has
    none yet but its autoscaler can add some; a warning when that is unknown; ExperimentError
    when it provably cannot get one (its trials would wait forever)."""
    if gpus <= 0:
        return
    # lazy: Ray (~0.3 s): `hpsearch validate` checks this machine's GPU without it
    import ray

    supply = cluster_gpu_supply()
    if supply.now >= gpus - 1e-6:  # (one node's GPU holds a trial: gpus <= 1)
        return
    where = f"the Ray cluster at {ray.get_runtime_context().gcs_address}"
    if supply.can_add:
        log(
            f"resources.gpus is {gpus:g}: {where} has no GPU yet; {supply.why}, so the trials "
            "wait until it has started one"
        )
    elif supply.can_add is None:
        log(
            f"WARNING: resources.gpus is {gpus:g}, and {where} has no GPU now; {supply.why}. "
            "The trials wait until a GPU node joins (`ray status` shows the demand); if none "
            "can, stop the run (Ctrl-C) and add a GPU node or set resources.gpus: 0"
        )
    else:
        raise ExperimentError(
            f"resources.gpus is {gpus:g}, but {where} has no GPU and cannot get one: "
            f"{supply.why}. Its trials would wait for a GPU forever. Add a GPU node (`ray start "
            "--address=...` on a GPU machine, or a node type with GPUs in the cluster's "
            "config), or run the search on the CPU (resources.gpus: 0)"
        )


def _reported_cluster_config() -> tuple[bool, str] | None:
    """The node groups an autoscaler reported to the GCS (Ray's ClusterConfig, which Ray Train
    reads the same way; Ray 2.60's autoscalers do not report it, newer autoscaler v2 code does):
    (can add a GPU, why), or None."""
    # lazy: Ray (~0.3 s): `hpsearch validate` checks this machine's GPU without it
    from ray._private.state import state

    try:
        most = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 (a private API: any failure means "not known")
        return None
    if not most:
        return None
    if most.get("GPU", 0) > 0:
        return True, f"its autoscaler can add up to {most['GPU']:g} GPUs"
    return False, "no node group of its autoscaler has a GPU"


def _bootstrap_config() -> tuple[bool, str] | None:
    """The autoscaling config `ray up` left on this machine (the head): (can add, why) when it
    settles the question, else None."""
    path = BOOTSTRAP_CONFIG.expanduser()
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return node_types_gpus(config, path) if isinstance(config, dict) else None


def node_types_gpus(
    config: dict[str, Any], source: Any = "the autoscaling config"
) -> tuple[bool, str] | None:
    """Whether an autoscaling config (cluster.yaml's format, resources filled in) lets the
    autoscaler add a node with a GPU: (True, which node type), (False, why not), or None when a
    worker type's resources are not known (`resources: {}` that `ray up` could not fill in)."""
    types = config.get("available_node_types")
    if not isinstance(types, dict):
        return None
    head = config.get("head_node_type")
    most = int(config.get("max_workers", 2))  # Ray's default
    unknown = []
    for name, node_type in types.items():
        if name == head or not isinstance(node_type, dict):
            continue
        if min(int(node_type.get("max_workers", most)), most) <= 0:
            continue
        resources = node_type.get("resources") or {}
        if resources.get("GPU", 0) > 0:
            return True, f"node type {name!r} of {source} has {resources['GPU']:g} GPU(s)"
        if not resources:
            unknown.append(name)
    if unknown:
        return None
    return False, f"no node type that {source} lets its autoscaler start has a GPU"


def _hand_started_nodes() -> tuple[bool, str] | None:
    """(False, why) when no node of the cluster was started by an autoscaler: Ray names such a
    node's type `node_<node id>` (`ray status` does the same: "we don't use cluster launcher,
    but start ray manually"), and without an autoscaler no node joins unless someone starts
    it. None otherwise."""
    # lazy: Ray (~0.3 s): `hpsearch validate` checks this machine's GPU without it
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    try:
        status = get_cluster_status(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 (the GCS did not answer: not known)
        return None
    nodes = [*status.active_nodes, *status.idle_nodes]
    if not nodes or any(n.ray_node_type_name != f"node_{n.node_id}" for n in nodes):
        return None
    return False, (
        f"it has no autoscaler: its {len(nodes)} node(s) were started by hand (`ray start`, or "
        "a local Ray), and none has a GPU"
    )
