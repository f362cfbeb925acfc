#!/usr/bin/env bash
# The whole suite, as `make test` runs it (after lint and types), as two streams that run side by side:
#
#   local    every test that does not need the test cluster (`-m "not cluster"`: unit, integration, e2e,
#            the contract suite's local and fake backends); it starts at once. One process: the cluster
#            stream is the longer one, and a second local process only slowed it (under that load a
#            terminal test once missed its resize);
#   cluster  the tests that need the test cluster (`-m cluster`: one cluster start for all of them); it
#            starts once the cluster's binaries are built (in the background: minutes on a fresh
#            machine, nothing when they are cached in ~/.cache/lesson-scheduler/k8s).
#
# Both streams spend most of their time waiting (workers starting, pods booting, pings, failovers), so
# side by side they take little longer than the longer one alone. They share no state: each test names
# what it makes with a unique prefix, and the cluster checks only its own leftovers. Every line is
# prefixed with its stream; each stream ends with pytest's slowest tests, and the run with each stream's
# time. Exit status: non-zero if the build or either stream failed (both always run to the end).
#
# Environment: PYTEST_ARGS (extra pytest arguments for both streams), PY (the interpreter, .venv's),
# K8S_BUILD_NICE (the build's niceness: 5 here, as the cluster stream waits for it).
set -uo pipefail
set -m  # each stream in a process group of its own, so an interrupt stops all of it
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PY:-.venv/bin/python}"
read -r -a extra <<<"${PYTEST_ARGS:-}"
# not in .k8s/: the cluster takes that folder only when it made it itself
mkdir -p build
build_log=build/k8s-tools.log
started=${SECONDS}
minutes() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
results=$(mktemp -d)
pids=()
# the streams and the build are ours: stop them (by PID) if the run is interrupted
trap 'for p in "${pids[@]}"; do kill -- "-${p}" 2>/dev/null; done; rm -rf "${results}"; exit 130' INT TERM

# stream NAME PYTEST_ARGS...: pytest with every output line prefixed "[NAME] "; writes its exit status and
# seconds to ${results}/NAME
stream() {
  local name="$1" begin=${SECONDS} rc
  shift
  "${PY}" -m pytest --durations=25 "$@" "${extra[@]}" 2>&1 | sed -u "s/^/[${name}] /"
  rc=${PIPESTATUS[0]}
  echo "${rc} $((SECONDS - begin))" >"${results}/${name}"
}

echo ">> the local stream starts; the test cluster's binaries build beside it (log: ${build_log})"
stream local -m "not cluster" &
pids+=($!)

(
  export K8S_BUILD_NICE="${K8S_BUILD_NICE:-5}"
  begin=${SECONDS}
  if bash tests/k8s/machinery/build-tools.sh >"${build_log}" 2>&1; then
    echo "[cluster] the cluster's binaries are ready after $((SECONDS - begin))s: the cluster stream starts"
    stream cluster -m cluster
  else
    echo "[cluster] the cluster's binaries did not build; the end of ${build_log}:"
    tail -n 30 "${build_log}" | sed 's/^/[cluster] /'
    echo "1 0" >"${results}/cluster"
  fi
) &
pids+=($!)

wait "${pids[@]}"
trap - INT TERM

read -r local_rc local_s <"${results}/local"
read -r cluster_rc cluster_s <"${results}/cluster"
rm -rf "${results}"
echo
echo "suite: local stream $(minutes "${local_s}") (exit ${local_rc}), cluster stream $(minutes "${cluster_s}")" \
  "(exit ${cluster_rc}), in all $(minutes $((SECONDS - started)))"
[[ ${local_rc} -eq 0 && ${cluster_rc} -eq 0 ]]
