#!/usr/bin/env bash
# The whole suite, as `make test` runs it (after lint and types), in two phases:
#
#   1. every test that does not need the test cluster (`-m "not cluster"`: unit, integration, e2e, the
#      contract suite's local backends), while the cluster's binaries build in the background (minutes on
#      a fresh machine; nothing when they are cached), so the build fills the time the tests spend waiting;
#   2. the tests that need the cluster (`-m cluster`), once the build is done: one cluster start for all.
#
# Each phase prints pytest's slowest tests; the end prints each phase's time. Exit status: non-zero if
# the build or either phase failed (both phases run whatever the first one gave).
#
# Environment: PYTEST_ARGS (extra pytest arguments for both phases), PY (the interpreter, .venv's).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PY:-.venv/bin/python}"
read -r -a extra <<<"${PYTEST_ARGS:-}"
mkdir -p .k8s
build_log=.k8s/build-tools.log
started=${SECONDS}
stamp() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

echo ">> building the test cluster's binaries in the background (log: ${build_log})"
bash tests/k8s/machinery/build-tools.sh >"${build_log}" 2>&1 &
build_pid=$!
# the build is ours: stop it (by its PID) if the run is interrupted
trap 'kill -- "${build_pid}" 2>/dev/null; exit 130' INT TERM

echo ">> phase 1: the tests that need no cluster"
phase1_started=${SECONDS}
"${PY}" -m pytest -m "not cluster" --durations=25 "${extra[@]}"
phase1_rc=$?
phase1=$((SECONDS - phase1_started))

echo ">> waiting for the cluster's binaries"
wait_started=${SECONDS}
if wait "${build_pid}"; then
  build_rc=0
else
  build_rc=$?
  echo "the cluster's binaries did not build (exit ${build_rc}); the end of ${build_log}:" >&2
  tail -n 30 "${build_log}" >&2
fi
waited=$((SECONDS - wait_started))
trap - INT TERM

phase2_rc=1
phase2=0
if [[ ${build_rc} -eq 0 ]]; then
  echo ">> phase 2: the tests that need the cluster"
  phase2_started=${SECONDS}
  "${PY}" -m pytest -m cluster --durations=25 "${extra[@]}"
  phase2_rc=$?
  phase2=$((SECONDS - phase2_started))
fi

echo
echo "suite: phase 1 (no cluster) $(stamp "${phase1}") exit ${phase1_rc}; waited for the build $(stamp "${waited}");" \
  "phase 2 (cluster) $(stamp "${phase2}") exit ${phase2_rc}; in all $(stamp $((SECONDS - started)))"
[[ ${phase1_rc} -eq 0 && ${build_rc} -eq 0 && ${phase2_rc} -eq 0 ]]
