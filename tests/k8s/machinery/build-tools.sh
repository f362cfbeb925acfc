#!/usr/bin/env bash
# Builds the test cluster's binaries from the Go module proxy, once, into
#   ~/.cache/lesson-scheduler/k8s/<kubernetes version>/bin
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet (k8s.io/kubernetes), etcd
# (go.etcd.io/etcd/server/v3), kwok (sigs.k8s.io/kwok), crane, Multus (from ../shared/third_party) and
# CoreDNS (github.com/coredns/coredns, the cluster DNS). Nothing is downloaded outside the
# Go module proxy, and nothing of it lands in the repository: the small build modules are written here,
# under the cache directory. If every binary is already there, it does nothing.
#
# Environment: K8S_VERSION, ETCD_VERSION, KWOK_VERSION (defaults in versions.sh), LESSON_K8S_CACHE,
# K8S_BUILD_NICE (default 19: the builds leave a core to whoever else works on this machine).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "${here}/versions.sh"

nice_level="${K8S_BUILD_NICE:-19}"
src_dir="${K8S_TOOLS_DIR}/src"
stamp_file="${K8S_TOOLS_DIR}/versions"
share_dir="${K8S_TOOLS_DIR}/share/kwok"

log() { printf '[k8s-tools %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[k8s-tools] error: %s\n' "$*" >&2; exit 1; }

all_built() {
  [[ -f "${stamp_file}" && "$(cat "${stamp_file}")" == "${K8S_STAMP}" ]] || return 1
  local b
  for b in "${K8S_BINARIES[@]}"; do [[ -x "${K8S_BIN_DIR}/${b}" ]] || return 1; done
  [[ -f "${share_dir}/stages.yaml" && -f "${share_dir}/crds.yaml" ]]
}

if all_built; then
  log "up to date: ${K8S_BIN_DIR} (${K8S_STAMP})"
  exit 0
fi

command -v go >/dev/null || die "go is not on PATH"
command -v python3 >/dev/null || die "python3 is not on PATH"

if [[ -f "${stamp_file}" && "$(cat "${stamp_file}")" != "${K8S_STAMP}" ]]; then
  old="$(cat "${stamp_file}")"
  log "pins changed (${old} -> ${K8S_STAMP}): rebuilding what changed"
  # A component whose pin is unchanged keeps its binary: adding a component rebuilds only that one.
  pin_changed() { [[ " ${old} " != *" $1 "* ]]; }
  pin_changed "kubernetes=${K8S_VERSION}" && rm -f "${K8S_BIN_DIR}"/kube{-apiserver,-controller-manager,-scheduler,ctl,let}
  pin_changed "etcd=${ETCD_VERSION}" && rm -f "${K8S_BIN_DIR}/etcd"
  pin_changed "kwok=${KWOK_VERSION}" && { rm -f "${K8S_BIN_DIR}/kwok"; rm -rf "${share_dir}"; }
  pin_changed "multus=${MULTUS_VERSION}" && rm -f "${K8S_BIN_DIR}/multus"
  pin_changed "crane=${CRANE_VERSION}" && rm -f "${K8S_BIN_DIR}/crane"
  pin_changed "coredns=${COREDNS_VERSION}" && rm -f "${K8S_BIN_DIR}/coredns"
  rm -f "${stamp_file}"
fi
mkdir -p "${K8S_BIN_DIR}" "${src_dir}"

export CGO_ENABLED=0
gorun() { nice -n "${nice_level}" go "$@"; }

started=${SECONDS}
step_started=${SECONDS}
step() { step_started=${SECONDS}; log "$*"; }
step_done() { log "  done in $((SECONDS - step_started))s"; }

need() {  # need NAME...: true if any of the named binaries is missing
  local b
  for b in "$@"; do [[ -x "${K8S_BIN_DIR}/${b}" ]] || return 0; done
  return 1
}

# Writes a tools.go that blank-imports the given main packages, so that `go mod tidy` records all their
# dependencies in go.sum. The build tag keeps it out of every build.
write_tools_go() {
  local f="$1"; shift
  {
    echo '//go:build tools'
    echo
    echo 'package tools'
    echo
    echo 'import ('
    local p
    for p in "$@"; do printf '\t_ "%s"\n' "${p}"; done
    echo ')'
  } >"${f}"
}

# --- kubernetes -----------------------------------------------------------------------------------------
k8s_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
if need "${k8s_cmds[@]}"; then
  mod="${src_dir}/kubernetes"
  step "kubernetes ${K8S_VERSION}: writing the build module in ${mod}"
  rm -rf "${mod}"; mkdir -p "${mod}"
  (
    cd "${mod}"
    go mod init lesson-scheduler.test/k8s-build >/dev/null 2>&1
    # k8s.io/kubernetes' own go.mod maps every staging module (k8s.io/api, k8s.io/apimachinery, ...) to
    # ./staging/src/...; those replaces do not apply to a dependent module, so map each to its release.
    k8s_gomod="$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if "Error" in d else print(d["GoMod"])')"
    staging_version="v0.${K8S_VERSION#v1.}"
    mapfile -t staging < <(go mod edit -json "${k8s_gomod}" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/"):
        print(r["Old"]["Path"])
')
    [[ ${#staging[@]} -gt 0 ]] || { echo "no staging replaces found in ${k8s_gomod}" >&2; exit 1; }
    args=(-require "k8s.io/kubernetes@${K8S_VERSION}")
    for m in "${staging[@]}"; do args+=(-replace "${m}=${m}@${staging_version}"); done
    go mod edit "${args[@]}"
    echo "  ${#staging[@]} staging modules replaced with their ${staging_version} releases"
    pkgs=(); for c in "${k8s_cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${c}"); done
    write_tools_go tools.go "${pkgs[@]}"
  )
  step_done

  step "kubernetes ${K8S_VERSION}: resolving and downloading modules (go mod tidy)"
  (cd "${mod}" && gorun mod tidy)
  step_done

  # The same version stamps kubernetes' own hack/lib/version.sh sets.
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  for c in "${k8s_cmds[@]}"; do
    if need "${c}"; then
      step "kubernetes ${K8S_VERSION}: building ${c} (minutes on a small machine)"
      (cd "${mod}" && gorun build -trimpath -ldflags "${ldflags}" -o "${K8S_BIN_DIR}/${c}.tmp" "k8s.io/kubernetes/cmd/${c}")
      mv "${K8S_BIN_DIR}/${c}.tmp" "${K8S_BIN_DIR}/${c}"
      step_done
    fi
  done
fi

# --- etcd -----------------------------------------------------------------------------------------------
# go.etcd.io/etcd/server/v3's go.mod has replace directives, so `go install pkg@version` refuses it; a
# build module that requires it builds the same main package.
if need etcd; then
  mod="${src_dir}/etcd"
  step "etcd ${ETCD_VERSION}: writing the build module in ${mod}"
  rm -rf "${mod}"; mkdir -p "${mod}"
  (
    cd "${mod}"
    go mod init lesson-scheduler.test/etcd-build >/dev/null 2>&1
    go mod edit -require "go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
    write_tools_go tools.go go.etcd.io/etcd/server/v3
    gorun mod tidy
  )
  step_done
  step "etcd ${ETCD_VERSION}: building etcd"
  (cd "${mod}" && gorun build -trimpath -ldflags "-s -w" -o "${K8S_BIN_DIR}/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "${K8S_BIN_DIR}/etcd.tmp" "${K8S_BIN_DIR}/etcd"
  step_done
fi

# --- kwok -----------------------------------------------------------------------------------------------
# sigs.k8s.io/kwok's go.mod has no replace directives: plain `go install pkg@version` works.
for c in kwok; do
  if need "${c}"; then
    step "kwok ${KWOK_VERSION}: building ${c}"
    GOBIN="${K8S_BIN_DIR}" gorun install -trimpath \
      -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/${c}@${KWOK_VERSION}"
    step_done
  fi
done

# --- multus ---------------------------------------------------------------------------------------------
# The thin plugin, the real node's CNI. Its module path (gopkg.in/k8snetworkplumbingwg/multus-cni.v4) is
# not served by the module proxy, but everything it requires is: build a copy of the source with -mod=mod.
if need multus; then
  multus_src="${THIRD_PARTY_DIR}/multus-cni"
  [[ -f "${multus_src}/cmd/multus/main.go" ]] || die "Multus ${MULTUS_VERSION} source not found in ${multus_src}: \
set LESSON_THIRD_PARTY to a folder holding multus-cni/ (github.com/k8snetworkplumbingwg/multus-cni at tag ${MULTUS_VERSION})"
  step "multus ${MULTUS_VERSION}: building the thin plugin from ${multus_src}"
  rm -rf "${src_dir}/multus-cni"
  cp -r "${multus_src}" "${src_dir}/multus-cni"
  (cd "${src_dir}/multus-cni" && gorun build -mod=mod -trimpath -ldflags "-s -w" -o "${K8S_BIN_DIR}/multus.tmp" ./cmd/multus)
  mv "${K8S_BIN_DIR}/multus.tmp" "${K8S_BIN_DIR}/multus"
  step_done
fi

# --- crane ----------------------------------------------------------------------------------------------
if need crane; then
  step "crane ${CRANE_VERSION}: building"
  GOBIN="${K8S_BIN_DIR}" gorun install -trimpath -ldflags "-s -w" \
    "github.com/google/go-containerregistry/cmd/crane@${CRANE_VERSION}"
  step_done
fi

# --- coredns --------------------------------------------------------------------------------------------
# The cluster DNS (cluster_dns.py). CoreDNS's own main imports every plugin (clouds, etcd, grpc, ...); this
# build module's main imports only those the Corefile uses plus coremain, the pattern coredns.io documents
# for custom builds, with CoreDNS's own directive order. Its go.mod has no replace directives.
if need coredns; then
  mod="${src_dir}/coredns"
  step "coredns ${COREDNS_VERSION}: writing the build module in ${mod}"
  rm -rf "${mod}"; mkdir -p "${mod}"
  (
    cd "${mod}"
    go mod init lesson-scheduler.test/coredns-build >/dev/null 2>&1
    go mod edit -require "github.com/coredns/coredns@${COREDNS_VERSION}"
    cat >main.go <<'EOF_MAIN'
// CoreDNS with only the plugins the test cluster's DNS uses.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
EOF_MAIN
    gorun mod tidy
  )
  step_done
  step "coredns ${COREDNS_VERSION}: building (bind, errors, health, kubernetes, log, ready)"
  (cd "${mod}" && gorun build -trimpath -ldflags "-s -w" -o "${K8S_BIN_DIR}/coredns.tmp" .)
  mv "${K8S_BIN_DIR}/coredns.tmp" "${K8S_BIN_DIR}/coredns"
  step_done
fi

# `kwok` needs its default stages as a config file (kwokctl, not built, compiles them in). Its
# Exec/ClusterExec CRDs let the node agent point `kubectl exec` at a pod's network namespace.
if [[ ! -f "${share_dir}/stages.yaml" || ! -f "${share_dir}/crds.yaml" ]]; then
  step "kwok ${KWOK_VERSION}: copying its default stages and Exec CRDs out of the module"
  kwok_src="$(cd "${src_dir}" && go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if "Error" in d else print(d["Dir"])')"
  mkdir -p "${share_dir}"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo '---'; cat "${kwok_src}/kustomize/stage/${f}"
  done >"${share_dir}/stages.yaml.tmp"
  for f in execs clusterexecs; do
    echo '---'; cat "${kwok_src}/kustomize/crd/bases/kwok.x-k8s.io_${f}.yaml"
  done >"${share_dir}/crds.yaml.tmp"
  mv "${share_dir}/stages.yaml.tmp" "${share_dir}/stages.yaml"
  mv "${share_dir}/crds.yaml.tmp" "${share_dir}/crds.yaml"
  step_done
fi

for b in "${K8S_BINARIES[@]}"; do [[ -x "${K8S_BIN_DIR}/${b}" ]] || die "${b} was not built"; done
echo "${K8S_STAMP}" >"${stamp_file}"
log "all binaries in ${K8S_BIN_DIR}, built in $((SECONDS - started))s:"
for b in "${K8S_BINARIES[@]}"; do
  printf '  %-24s %s\n' "${b}" "$(du -h "${K8S_BIN_DIR}/${b}" | cut -f1)"
done
