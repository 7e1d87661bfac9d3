"""cluster.yaml passes Ray's own cluster-config validation and keeps the cluster closed.

Ray's cluster launcher merges a config with its provider defaults (``prepare_config``)
and checks it against ``ray/autoscaler/ray-schema.json`` (``validate_config``) before it
makes any cloud call; this runs the same two steps, offline.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_validates_the_config(config):
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"

    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_1x_v100"]["min_wokers"] = 1  # a typo Ray must catch
    with pytest.raises(jsonschema.ValidationError, match="min_wokers"):
        validate_config(prepare_config(broken))


def test_cpu_head_and_v100_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("p", "g"))  # a CPU instance
    assert "GPU" not in head["resources"]
    workers = {name: spec for name, spec in types.items() if name != config["head_node_type"]}
    gpus = {spec["node_config"]["InstanceType"]: spec["resources"]["GPU"]
            for spec in workers.values()}
    assert gpus == {"p3.2xlarge": 1, "p3.8xlarge": 4}  # V100s
    assert sum(spec.get("min_workers", 0) for spec in workers.values()) == 0  # GPUs on demand


def test_project_install_and_torch_for_v100(config):
    assert config["file_mounts"]["/home/ubuntu/pdml_ray"] == "."
    setup = "\n".join(config["setup_commands"])
    assert "pip install --quiet -c constraints.txt -e ." in setup
    assert "download.pytorch.org/whl/cu126" in setup  # CUDA 13 builds lack sm_70
    assert "sm_70" in "\n".join(config["worker_setup_commands"])


def test_every_node_boots_ubuntu_22_04_not_rays_default_ami(config):
    # Ray replaces "latest_dlami" (or no ImageId) by its own per-region default: an
    # Ubuntu 18.04 image whose glibc is older than the torch wheels need.
    images = {spec["node_config"].get("ImageId", "")
              for spec in config["available_node_types"].values()}
    assert images == {"resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
                      "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"}
    node_check = "\n".join(config["worker_setup_commands"])
    assert "torch.cuda.is_available()" in node_check  # a driver that cannot see the V100


def test_dashboard_and_job_server_are_not_public(config):
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        open_to_all = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or \
            any(r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", []))
        covers = {8265, 6379, 10001} & set(range(rule["FromPort"], rule["ToPort"] + 1))
        assert not (open_to_all and covers), rule
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start


def test_token_auth_on_every_node(config):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [command for command in config[key] if "ray start" in command]
        assert start and all("RAY_AUTH_MODE=token ray start" in command for command in start)
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"


def test_no_secret_in_the_file():
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id
    assert not re.search(r"(MLFLOW_TRACKING_(PASSWORD|TOKEN)|AWS_SECRET_ACCESS_KEY|RAY_AUTH_TOKEN)"
                         r"\s*[=:]\s*\S", text)  # a secret's value
    assert not re.search(r"https?://[^/\s]*:[^/\s]*@", text)  # credentials in a URI
