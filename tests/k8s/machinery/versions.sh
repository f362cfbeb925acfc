# Pinned versions of the test cluster's components, sourced by build-tools.sh (and read by cluster.py).
# Change a version here and `make k8s-tools` builds a fresh set into a new cache directory.
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
# etcd at the version kubernetes ${K8S_VERSION} itself pins (go.etcd.io/etcd/server/v3 in its go.mod).
ETCD_VERSION="${ETCD_VERSION:-v3.6.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
# The real node's CNI: Multus's thin plugin, from the source in ../shared/third_party (the module proxy
# does not serve it; a machine without that folder takes the same tag upstream).
MULTUS_VERSION="${MULTUS_VERSION:-v4.3.0}"
# go-containerregistry's crane: the loopback registry (`crane registry serve`) and the image pushes.
CRANE_VERSION="${CRANE_VERSION:-v0.22.1}"
# The cluster DNS: CoreDNS with only the plugins it uses (build-tools.sh writes its small main package).
# v1.14.1 is the newest release whose go.mod asks for no Go newer than the project's floor (1.24: later
# ones want 1.25), and it requires client-go v0.34, the cluster's own minor.
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.1}"

K8S_CACHE_ROOT="${LESSON_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lesson-scheduler/k8s}"
K8S_TOOLS_DIR="${K8S_CACHE_ROOT}/${K8S_VERSION}"
# Written last by build-tools.sh; a set built with other etcd/kwok pins is rebuilt.
K8S_STAMP="kubernetes=${K8S_VERSION} etcd=${ETCD_VERSION} kwok=${KWOK_VERSION} multus=${MULTUS_VERSION} crane=${CRANE_VERSION} coredns=${COREDNS_VERSION}"
K8S_BIN_DIR="${K8S_BIN_DIR:-${K8S_TOOLS_DIR}/bin}"
THIRD_PARTY_DIR="${LESSON_THIRD_PARTY:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/../shared/third_party}"
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet etcd kwok multus crane coredns)
