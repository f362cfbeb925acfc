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
# Untimed: three network namespaces and a "node" one (ip netns add), the folders and config.json of each
# bundle, and the hosts file (bb1..bb3 and their eth0 addresses), bind-mounted as each container's /etc/hosts.
# Timed (main_ms): each pod's eth0, the seed's main network, as the backend makes it: three CNI ADDs in
# parallel (the bridge plugin, static IPAM, one bridge in the node namespace).
# Timed (start_ms): the three containers in parallel, each an overlay mount then `runc run --detach`.
# Then, also timed: one `runc exec bb1 true` (exec_ms) and six in parallel, two per container (exec6_ms:
# the concurrency of the triangle's six ping directions), and the six pings by name over eth0 in parallel
# (names_ms: `runc exec bbX ping -c1 bbY`, the name resolved in the container through its hosts file).
# Prints one line; removes everything (runc delete, umount, netns, cgroups, files) on exit, whatever
# happened. Private `runc --root` under a temporary folder.
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
  for p in "${PODS[@]}" node; do ip netns del "$P-$p" 2>/dev/null || true; done
  for c in /sys/fs/cgroup/*/"$P" /sys/fs/cgroup/"$P"; do [ -d "$c" ] && rmdir "$c" 2>/dev/null || true; done
  rm -rf "$D"
}
trap cleanup EXIT
ms() { echo $(( ($2 - $1) / 1000000 )); }

ip netns add "$P-node"
printf '127.0.0.1\tlocalhost\n10.250.0.2\tbb1\n10.250.0.3\tbb2\n10.250.0.4\tbb3\n' >"$D/hosts"
for p in "${PODS[@]}"; do
  ip netns add "$P-$p"
  ip netns exec "$P-$p" ip link set lo up
  mkdir -p "$D/$p/rootfs" "$D/$p/upper" "$D/$p/work"
  jq --arg host "$p" --arg root "$D/$p/rootfs" --arg netns "/run/netns/$P-$p" --arg cg "/$P/$p" \
    --arg hosts "$D/hosts" '
    .process.terminal = false
    | .process.args = ["sleep", "infinity"]
    | .process.env = ([.process.env[]? | select(startswith("HOSTNAME=") | not)] + ["HOSTNAME=" + $host])
    | .hostname = $host
    | .root = {path: $root, readonly: false}
    | .linux.namespaces = [{type: "pid"}, {type: "ipc"}, {type: "uts"}, {type: "mount"},
                           {type: "network", path: $netns}]
    | .linux.cgroupsPath = $cg
    | .mounts = ([.mounts[]? | select(.destination != "/etc/hosts")]
                 + [{destination: "/etc/hosts", type: "bind", source: $hosts, options: ["bind", "ro"]}])' \
    "$BASE" >"$D/$p/config.json"
done

eth0() { # pod address
  printf '{"cniVersion":"0.4.0","name":"%s","type":"bridge","bridge":"%s","isGateway":false,"ipMasq":false,"hairpinMode":true,"ipam":{"type":"static","addresses":[{"address":"%s/24"}]}}' \
    "${P}m" "${P}m" "$2" |
    CNI_COMMAND=ADD CNI_CONTAINERID="$P-$1" CNI_NETNS="/run/netns/$P-$1" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
      ip netns exec "$P-node" /usr/lib/cni/bridge >/dev/null
}
start() { # pod
  mount -t overlay overlay -o "lowerdir=$IMAGE/rootfs,upperdir=$D/$1/upper,workdir=$D/$1/work" "$D/$1/rootfs"
  # detached: the container keeps runc's stdio, so it gets a file, not our stdout
  runc --root "$R" run --detach --bundle "$D/$1" "$P-$1" </dev/null >"$D/$1.out" 2>&1
}
fails=0
tm=$(date +%s%N)
pids=()
k=2
for p in "${PODS[@]}"; do eth0 "$p" "10.250.0.$k" & pids+=($!); k=$((k + 1)); done
for pid in "${pids[@]}"; do wait "$pid" || fails=$((fails + 1)); done
t0=$(date +%s%N)
pids=()
for p in "${PODS[@]}"; do start "$p" & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid" || fails=$((fails + 1)); done
t1=$(date +%s%N)
runc --root "$R" exec "$P-bb1" true
t2=$(date +%s%N)
pids=()
for p in "${PODS[@]}" "${PODS[@]}"; do runc --root "$R" exec "$P-$p" true & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid" || fails=$((fails + 1)); done
t3=$(date +%s%N)
pids=()
for pair in bb1:bb2 bb2:bb1 bb2:bb3 bb3:bb2 bb3:bb1 bb1:bb3; do
  runc --root "$R" exec "$P-${pair%%:*}" ping -n -q -c 1 -W 1 "${pair##*:}" >/dev/null & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || fails=$((fails + 1)); done
t4=$(date +%s%N)
echo "floor-containers main_ms=$(ms "$tm" "$t0") start_ms=$(ms "$t0" "$t1") exec_ms=$(ms "$t1" "$t2")" \
  "exec6_ms=$(ms "$t2" "$t3") names_ms=$(ms "$t3" "$t4") failed=$fails"
[ "$fails" = 0 ]
