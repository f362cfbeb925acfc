"""The node agent's manifests and command line: its ServiceAccount, read-only role and DaemonSet agree with
each other and with the code (the label it selects nodes by, the module it runs), and bad arguments are
refused with exit code 2 and a message, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.core import naming

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "config" / "k8s" / "node-agent.yaml"
DAEMONSET = REPO / "config" / "k8s" / "daemonset" / "node-agent.yaml"


def documents(path: Path) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}


def test_the_role_only_reads_nads_and_nodes_and_is_bound_to_the_agents_account() -> None:
    docs = documents(RBAC)
    account = docs["ServiceAccount"]["metadata"]
    rules = docs["ClusterRole"]["rules"]
    assert {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]} == {
        ("k8s.cni.cncf.io", "network-attachment-definitions"),
        ("", "nodes"),
    }
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in rules)
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == docs["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


def test_the_daemonset_runs_the_agent_as_that_account_on_the_labelled_nodes() -> None:
    account = documents(RBAC)["ServiceAccount"]["metadata"]
    daemonset = documents(DAEMONSET)["DaemonSet"]
    assert daemonset["metadata"]["namespace"] == account["namespace"]
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == account["name"]
    assert spec["hostNetwork"] is True  # the devices go in the node's own namespace
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": naming.LABEL_TUNNEL_ADDRESS, "operator": "Exists"}]}]
    (container,) = spec["containers"]
    assert container["command"][:3] == ["python", "-m", "workers.node_agent"]
    assert (REPO / "workers" / "node_agent" / "__main__.py").is_file()
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--node", "../etc"], "is not a node name"),
        (["--node", "n1", "--mtu", "100000"], "is not in 576..9000"),
        (["--node", "n1", "--resync", "0"], "is not in 1..3600"),
        (["--node", "n1", "--kubeconfig", "/nonexistent/kubeconfig"], "no Kubernetes configuration"),
        ([], "--node"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(args: list[str], says: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workers.node_agent", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 2, proc
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
