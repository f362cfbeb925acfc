# The README's two commands, `make demo` and `make test`, work on a fresh Debian machine as root:
# each installs what is missing (apt packages, the venv, the project) and is quick when all is there.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
# runc runs the local backend's containers, umoci unpacks (and builds) images, skopeo imports and pulls them,
# busybox-static is what the demo's busybox image is built from
APT_PACKAGES := redis-server containernetworking-plugins iproute2 iputils-ping util-linux procps \
	runc umoci skopeo busybox-static
# only the tests need these: headless Chromium for the status page, a font for its screenshot, containerd
# for the test cluster's real node, and Redis Sentinel for the failover tests and soak
TEST_APT_PACKAGES := chromium fonts-dejavu-core openssl containerd redis-sentinel
# a stamp per input, so `make` reinstalls only when pyproject.toml changes
STAMP := $(VENV)/.installed

.PHONY: help deps apt venv demo check test test-prereqs lint typecheck unit pytest bench soak clean

help:
	@echo "make demo   run the seed's triangle on the local backend (as root)"
	@echo "make check  the quick tier, for every change: ruff, import layers, mypy, unit tests (no root, < 2 min)"
	@echo "make test   everything: the quick tier, then every test, cluster included (as root, < 25 min cached)"
	@echo "make bench  the benchmarks (bench/), tables into docs/benchmarks.md"

apt:
	@missing=""; for p in $(APT_PACKAGES) $(EXTRA_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo ">> apt-get install$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@# the packaged redis service is not ours to run: tests and the demo start their own on a free port
	@for unit in redis-server redis-sentinel; do \
	  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled $$unit >/dev/null 2>&1; then \
	    systemctl disable --now $$unit >/dev/null 2>&1 || true; fi; done

$(PY):
	@command -v python3 >/dev/null || { echo "python3 is missing: apt-get install python3 python3-venv"; exit 1; }
	@python3 -m venv $(VENV) || { apt-get install -y -q python3-venv && python3 -m venv $(VENV); }
	@$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@echo ">> pip install -e .[test]"
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(STAMP)

deps: apt venv

demo: deps
	$(VENV)/bin/lessonctl demo config/lessons/busybox-triangle.yaml

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy

# the unit tier: pure code, the CLI offline, and the pipeline's decisions on the in-memory fake backend;
# no root, no network namespace, no cluster. Two processes: the hypothesis tests keep both cores busy.
unit: venv
	$(PY) -m pytest tests/unit -q -n 2 --durations=10

# the inner loop: what every change should pass before it is pushed; it says how long it took
check: venv
	@start=$$(date +%s); $(MAKE) --no-print-directory lint typecheck unit && \
	  echo "make check: passed in $$(( $$(date +%s) - start ))s"

pytest: venv
	@$(MAKE) --no-print-directory apt EXTRA_APT="$(TEST_APT_PACKAGES)"
	$(PY) -m pytest

# what `make test` needs and apt cannot give: said at once, before minutes of work
GO_MIN := 1.24
# (only while Multus's binary is not built: the cluster's binaries are cached outside the repository)
MULTUS_SRC := $(or $(LESSON_THIRD_PARTY),$(CURDIR)/../shared/third_party)/multus-cni
test-prereqs:
	@bash -c 'source $(K8S_MACHINERY)/versions.sh && [ -x "$$K8S_BIN_DIR/multus" ]' || \
	  [ -f "$(MULTUS_SRC)/cmd/multus/main.go" ] || { echo "make test needs Multus v4.3.0's source in $(MULTUS_SRC) (github.com/k8snetworkplumbingwg/multus-cni at tag v4.3.0; the Go module proxy does not serve it), or LESSON_THIRD_PARTY naming the folder that holds multus-cni/"; exit 1; }
	@command -v go >/dev/null 2>&1 || { echo "make test needs Go $(GO_MIN) or newer on PATH to build the test Kubernetes cluster (https://go.dev/dl/); everything else it installs itself"; exit 1; }
	@v=$$(go env GOVERSION | sed 's/^go//'); \
	  if [ "$$(printf '%s\n%s\n' "$(GO_MIN)" "$$v" | sort -V | head -1)" != "$(GO_MIN)" ]; then \
	    echo "make test needs Go $(GO_MIN) or newer (found $$v) to build the test Kubernetes cluster (https://go.dev/dl/)"; exit 1; fi
	@$(MAKE) --no-print-directory apt EXTRA_APT="$(TEST_APT_PACKAGES)"

# lint and types first (seconds); then tests/run-suite.sh: the tests that need no cluster, and beside them
# the test cluster's binaries build (once, minutes, cached outside the repo) and then the cluster's tests
# run. It prints the slowest tests of each stream and the time of each.
test: test-prereqs lint typecheck
	@bash tests/run-suite.sh

bench: deps
	$(PY) bench/local_backend.py
	$(PY) bench/pipeline.py

# the long soak of docs/reliability.md: 200 lessons over 10 minutes under worker kills and a Redis restart
# docs/reliability.md cites bench/results/soak.txt and fuzz.jsonl, both committed
soak: deps
	mkdir -p bench/results
	set -o pipefail; $(PY) bench/soak.py --duration 600 --count 200 --json bench/results/soak.json \
	  --logs bench/results/soak-logs | tee bench/results/soak.txt
	rm -f bench/results/fuzz.jsonl
	FUZZ_EXAMPLES=10000 FUZZ_REPORT=bench/results/fuzz.jsonl $(PY) -m pytest -q tests/unit/test_fuzz_loader.py
	API_FUZZ_EXAMPLES=1000 FUZZ_REPORT=bench/results/fuzz.jsonl $(PY) -m pytest -q tests/integration/test_api_schema.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

include k8s.mk
