#!/bin/bash
# The floor for the seed triangle's three containers on this host: busybox started three times by hand with
# the tools the local backend uses (an overlay mount over the unpacked image, runc), nothing in between.
# Beside ../shared/bench/floor-triangle.sh (namespaces, CNI, pings) it makes the floor of the triangle in
# container mode. Needs root, runc and jq.
#
#   bench/floor-containers.sh IMAGE_DIR [CONFIG]
#
# IMAGE_DIR: an unpacked image, as the image store holds it (`rootfs/` and umoci's `config.json`); CONFIG: a
# runtime config to start from (bench/containers.py passes the one the backend itself generates for bb1, so
# that capabilities, mounts and cgroup limits are the product's); default IMAGE_DIR/config.json. Per container
# jq sets the command (sleep infinity), the hostname, the rootfs, the network namespace and the cgroup.
#
# Untimed: three network namespaces (ip netns add), the folders and config.json of each bundle.
# Timed (start_ms): the three containers in parallel, each an overlay mount then `runc run --detach`.
# Then, also timed: one `runc exec bb1 true` (exec_ms) and six in parallel, two per container (exec6_ms:
# the concurrency of the triangle's six ping directions). Prints one line; removes everything (runc delete,
# umount, netns, cgroups, files) on exit, whatever happened. Private `runc --root` under a temporary folder.
set -euo pipefail
IMAGE=${1:?usage: floor-containers.sh IMAGE_DIR [CONFIG]}
BASE=${2:-$IMAGE/config.json}
[ -d "$IMAGE/rootfs" ] || { echo "$IMAGE/rootfs: no such folder (an unpacked image)" >&2; exit 2; }
P=floorc$$
D=$(mktemp -d /tmp/floorc-XXXXXX)
R="$D/runc"
PODS=(bb1 bb2 bb3)
cleanup() {
  for p in "${PODS[@]}"; do runc --root "$R" delete --force "$P-$p" >/dev/null 2>&1 || true; done
  for p in "${PODS[@]}"; do umount -l "$D/$p/rootfs" 2>/dev/null || true; done
  for p in "${PODS[@]}"; do ip netns del "$P-$p" 2>/dev/null || true; done
  for c in /sys/fs/cgroup/*/"$P" /sys/fs/cgroup/"$P"; do [ -d "$c" ] && rmdir "$c" 2>/dev/null || true; done
  rm -rf "$D"
}
trap cleanup EXIT
ms() { echo $(( ($2 - $1) / 1000000 )); }

for p in "${PODS[@]}"; do
  ip netns add "$P-$p"
  mkdir -p "$D/$p/rootfs" "$D/$p/upper" "$D/$p/work"
  jq --arg host "$p" --arg root "$D/$p/rootfs" --arg netns "/run/netns/$P-$p" --arg cg "/$P/$p" '
    .process.terminal = false
    | .process.args = ["sleep", "infinity"]
    | .process.env = ([.process.env[]? | select(startswith("HOSTNAME=") | not)] + ["HOSTNAME=" + $host])
    | .hostname = $host
    | .root = {path: $root, readonly: false}
    | .linux.namespaces = [{type: "pid"}, {type: "ipc"}, {type: "uts"}, {type: "mount"},
                           {type: "network", path: $netns}]
    | .linux.cgroupsPath = $cg' "$BASE" >"$D/$p/config.json"
done

start() { # pod
  mount -t overlay overlay -o "lowerdir=$IMAGE/rootfs,upperdir=$D/$1/upper,workdir=$D/$1/work" "$D/$1/rootfs"
  # detached: the container keeps runc's stdio, so it gets a file, not our stdout
  runc --root "$R" run --detach --bundle "$D/$1" "$P-$1" </dev/null >"$D/$1.out" 2>&1
}
t0=$(date +%s%N)
pids=()
for p in "${PODS[@]}"; do start "$p" & pids+=($!); done
fails=0
for pid in "${pids[@]}"; do wait "$pid" || fails=$((fails + 1)); done
t1=$(date +%s%N)
runc --root "$R" exec "$P-bb1" true
t2=$(date +%s%N)
pids=()
for p in "${PODS[@]}" "${PODS[@]}"; do runc --root "$R" exec "$P-$p" true & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid" || fails=$((fails + 1)); done
t3=$(date +%s%N)
echo "floor-containers start_ms=$(ms "$t0" "$t1") exec_ms=$(ms "$t1" "$t2") exec6_ms=$(ms "$t2" "$t3") failed=$fails"
[ "$fails" = 0 ]
