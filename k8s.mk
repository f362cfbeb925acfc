# The test Kubernetes cluster (issues 5, 14): a real control plane built from the Go module proxy, a real node
# (kubelet, containerd, runc, Multus), kwok nodes, a cluster DNS (CoreDNS in a network namespace of its own
# on the real node's pod network), and a node agent that wires pods with the real CNI plugins. Included by
# the Makefile.
#
#   make k8s-tools    build the binaries once into ~/.cache/lesson-scheduler/k8s/<version>/bin
#   make k8s-up       start the cluster in the background, write .k8s/kubeconfig (idempotent)
#   make k8s-down     stop it, undo its network namespaces (the DNS's, the agent's) and remove .k8s/ (idempotent)
#   make k8s-status   say what runs
#   make k8s-test     the cluster's own tests (tests/k8s)

K8S_DIR := tests/k8s
# the cluster's machinery (scripts, agent, proxy), apart from its tests
K8S_MACHINERY := tests/k8s/machinery
K8S_PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: k8s-tools k8s-up k8s-down k8s-status k8s-test

k8s-tools:
	@bash $(K8S_MACHINERY)/build-tools.sh

k8s-up: k8s-tools
	@$(K8S_PYTHON) $(K8S_MACHINERY)/cluster.py up

k8s-down:
	@$(K8S_PYTHON) $(K8S_MACHINERY)/cluster.py down

k8s-status:
	@$(K8S_PYTHON) $(K8S_MACHINERY)/cluster.py status

k8s-test: k8s-tools
	$(K8S_PYTHON) -m pytest $(K8S_DIR) -v
