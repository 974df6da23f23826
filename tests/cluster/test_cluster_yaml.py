"""cluster.yaml: valid for Ray's autoscaler (`ray up` prepares and validates it the same way),
closed to the world, installing the project with the tested versions, and with GPU workers that
train on CUDA or fail their setup."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_validates_against_rays_autoscaler_schema(config):
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


def test_a_cpu_head_and_autoscaling_gpu_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials never land on the head
    (worker,) = (t for name, t in types.items() if name != config["head_node_type"])
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))  # AWS GPU families


def test_only_ssh_is_reachable_from_outside(config):
    # With SecurityGroupIds on every node type Ray creates no group of its own (whose SSH rule
    # would admit 0.0.0.0/0); the dashboard and the job server listen on 127.0.0.1 only.
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"].get("SecurityGroupIds"), name
    assert "0.0.0.0" not in yaml.safe_dump(config)
    (start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in start
    assert "IpPermissions" not in config["provider"].get("security_group", {})


def test_token_authentication_on_every_node(config):
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in config[key] if "ray start" in c]
        assert "RAY_AUTH_MODE=token" in start, key


def test_installs_the_synced_working_copy_with_its_constraints(config):
    (remote,) = [r for r, local in config["file_mounts"].items() if local == "."]
    assert ".gitignore" in config["rsync_filter"]  # no .venv, runs/ or demo_data/ upload
    assert any(
        f"cd {remote}" in c and "pip install" in c and "-c constraints.txt -e ." in c
        for c in config["setup_commands"]
    )


def test_ray_image_matches_the_pinned_ray(config):
    constraints = (CLUSTER_YAML.parent / "constraints.txt").read_text()
    (ray_pin,) = re.findall(r"^ray==(\S+)$", constraints, flags=re.M)
    docker = config["docker"]
    for image in (docker["image"], docker.get("head_image", docker["image"])):
        assert image.startswith(f"rayproject/ray:{ray_pin}-py311"), image


def test_results_go_to_s3_with_each_node_types_own_role(config):
    # Runs are started with --storage s3://BUCKET/runs: every node writes there with its instance
    # role (no keys on any machine), and no shared filesystem is mounted.
    arns = {
        name: t["node_config"]["IamInstanceProfile"]["Arn"]
        for name, t in config["available_node_types"].items()
    }
    assert len(set(arns.values())) == 2  # the workers' role cannot launch instances
    assert all(arn.startswith("REPLACE_") for arn in arns.values())
    assert not config["initialization_commands"]
    assert not any("/mnt/shared" in option for option in config["docker"]["run_options"])
    assert "--storage s3://BUCKET/runs" in CLUSTER_YAML.read_text()


def _nfs_variant(text: str) -> str:
    """cluster.yaml edited as its comments say for NFS instead of S3."""
    lines = []
    for line in text.splitlines():
        if "IamInstanceProfile:" in line:
            continue  # "delete both IamInstanceProfile entries"
        if line == "initialization_commands: []":
            line = "initialization_commands:"
        elif line.startswith("#  - ") and "/mnt/shared" in line:
            line = line[1:]
        elif line.strip() == "# NFS instead of S3: - -v /mnt/shared:/mnt/shared":
            line = "    - -v /mnt/shared:/mnt/shared"
        lines.append(line)
    return "\n".join(lines)


def test_nfs_is_the_documented_alternative_and_valid():
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    nfs = yaml.safe_load(_nfs_variant(CLUSTER_YAML.read_text()))
    validate_config(prepare_config(nfs))
    (mount,) = [c for c in nfs["initialization_commands"] if "mount -t nfs4" in c]
    assert "REPLACE_NFS_SERVER:/ /mnt/shared" in mount
    assert "-v /mnt/shared:/mnt/shared" in nfs["docker"]["run_options"]
    for name, node_type in nfs["available_node_types"].items():
        assert "IamInstanceProfile" not in node_type["node_config"], name


def test_gpu_workers_boot_an_image_whose_driver_runs_the_pinned_cuda(config):
    # Ray's default AWS image (a Deep Learning AMI for Ubuntu 18.04) has a driver too old for
    # CUDA 13 (>= 580): the workers name their own image, found by the command beside it.
    (worker,) = (t for n, t in config["available_node_types"].items() if n != "head")
    assert worker["node_config"]["ImageId"] == "REPLACE_GPU_AMI_ID"
    text = CLUSTER_YAML.read_text()
    assert (
        "aws ssm get-parameter --name /aws/service/deeplearning/ami/x86_64/"
        "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id --region "
        f"{config['provider']['region']} --query Parameter.Value --output text"
    ) in text
    assert "ImageId" not in config["available_node_types"]["head"]["node_config"]  # CPU: default


def test_a_gpu_worker_without_usable_cuda_fails_its_setup_saying_why(config):
    """The worker's setup command, run here (no GPU): it fails with the reason, no traceback,
    so a worker with an old driver never joins and no trial trains on its CPU."""
    (check,) = config["worker_setup_commands"]
    assert "nvidia-smi" in check and "cuda_problem" in check
    assert not config["head_setup_commands"]  # the head has no GPU and trains nothing
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "CUDA_VISIBLE_DEVICES": "",  # no usable GPU, also on a machine that has one
    }
    out = subprocess.run(
        ["bash", "-c", check], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 1, out.stderr
    assert "CUDA" in out.stderr and "Traceback" not in out.stderr
