#!/usr/bin/env bash
# Build (or find) a node-less Kubernetes control plane for tests, the way envtest's
# binaries are built: kube-apiserver and etcd compiled from the official Go modules.
#
# Prints the directory holding `kube-apiserver` and `etcd` on stdout (and nothing else);
# progress goes to stderr.
#
# `controlplane.sh --node` also builds what a single-node cluster needs (kubelet,
# kube-controller-manager, kube-scheduler) into the same directory, from the same module
# graph and in the same `go build` invocation as kube-apiserver when it is built cold, so
# the packages they share (most of k8s.io/kubernetes/pkg) compile once.
#
# Order:
#   1. $KUBEBUILDER_ASSETS, when it holds both binaries (envtest convention).
#   2. The cache: ${KUBETASKS_CACHE:-$HOME/.cache/kubetasks}/controlplane/v<k8s>/bin
#   3. Build into that cache from a throwaway Go module (nothing lands in the repo).
#
# Knobs: KUBETASKS_K8S_VERSION (default below), KUBETASKS_CACHE, GO (path to go).
set -euo pipefail

K8S_VERSION="${KUBETASKS_K8S_VERSION:-1.37.2}"
K8S_VERSION="${K8S_VERSION#v}"

log() { printf 'controlplane.sh: %s\n' "$*" >&2; }

K8S_BINS=(kube-apiserver)
if [[ "${1:-}" == "--node" ]]; then
    K8S_BINS+=(kube-controller-manager kube-scheduler kubelet)
fi

has_bins() {
    local name
    for name in "${K8S_BINS[@]}" etcd; do
        [[ -x "$1/$name" ]] || return 1
    done
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && has_bins "$KUBEBUILDER_ASSETS"; then
    printf '%s\n' "$KUBEBUILDER_ASSETS"
    exit 0
fi

CACHE_ROOT="${KUBETASKS_CACHE:-$HOME/.cache/kubetasks}"
DEST="$CACHE_ROOT/controlplane/v$K8S_VERSION"
BIN="$DEST/bin"

if has_bins "$BIN"; then
    printf '%s\n' "$BIN"
    exit 0
fi

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [[ ! -x "$GO" ]]; then
    log "no Go toolchain found (set GO=/path/to/go)"
    exit 1
fi

mkdir -p "$DEST"
# Two test sessions may ask at once: only one builds, the other waits and reuses.
exec 9>"$DEST/.lock"
flock 9
if has_bins "$BIN"; then
    printf '%s\n' "$BIN"
    exit 0
fi

SRC="$DEST/src"
rm -rf "$BIN.tmp"
mkdir -p "$BIN.tmp"
# Binaries already built (the control plane, when --node is asked later) are kept.
missing=()
for name in "${K8S_BINS[@]}"; do
    if [[ -x "$BIN/$name" ]]; then cp -p "$BIN/$name" "$BIN.tmp/"; else missing+=("$name"); fi
done
[[ -x "$BIN/etcd" ]] && cp -p "$BIN/etcd" "$BIN.tmp/"
[[ -f "$BIN/VERSIONS" ]] && cp -p "$BIN/VERSIONS" "$BIN.tmp/"
mkdir -p "$SRC"
cd "$SRC"

# Frugal: lowest CPU priority, no local paths in binaries, stripped symbols.
export GOFLAGS="-trimpath"
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
NICE=(nice -n 19)

start=$(date +%s)
log "building Kubernetes v$K8S_VERSION (${missing[*]:-} etcd) in $DEST (go: $("$GO" version))"

if [[ ! -f go.mod ]]; then
    "$GO" mod init kubetasks.dev/controlplane-build >/dev/null 2>&1
fi

# k8s.io/kubernetes requires its staging modules at v0.0.0 (resolved by in-repo replaces
# upstream); the published equivalents are v0.<minor>.<patch>.
gomod_json=$("${NICE[@]}" "$GO" mod download -json "k8s.io/kubernetes@v$K8S_VERSION")
k8s_gomod=$(printf '%s' "$gomod_json" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
if [[ ! -f "$k8s_gomod" ]]; then
    log "could not read go.mod of k8s.io/kubernetes@v$K8S_VERSION"
    exit 1
fi
staging_version="v0.${K8S_VERSION#*.}"
edits=(-require="k8s.io/kubernetes@v$K8S_VERSION")
while read -r mod; do
    edits+=(-replace="$mod=$mod@$staging_version")
done < <(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$k8s_gomod")
"$GO" mod edit "${edits[@]}"
log "replaced $(( ${#edits[@]} - 1 )) staging modules with $staging_version"

# etcd: use the server version k8s.io/kubernetes itself pins, so both binaries come from
# one consistent module graph (and match what upstream tests against).
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2 }' "$k8s_gomod")
if [[ -z "$etcd_version" ]]; then
    etcd_version="v3.5.21"
    log "k8s go.mod pins no etcd server; falling back to $etcd_version"
    "$GO" mod edit -require="go.etcd.io/etcd/server/v3@$etcd_version"
fi

# Resolve the graph and record go.sum for every main package.
pkgs=()
for name in "${K8S_BINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$name"); done
gets=()
for pkg in "${pkgs[@]}"; do gets+=("$pkg@v$K8S_VERSION"); done
"${NICE[@]}" "$GO" get "${gets[@]}" >&2
"${NICE[@]}" "$GO" get "go.etcd.io/etcd/server/v3@$etcd_version" >&2

# The etcd binary's main package is the root of the server module (etcd >= 3.5).
if [[ "$("$GO" list -f '{{.Name}}' go.etcd.io/etcd/server/v3)" != "main" ]]; then
    log "go.etcd.io/etcd/server/v3@$etcd_version is not a main package"
    exit 1
fi

# Stamp the version the way hack/lib/version.sh does, so `kubectl version` reports it.
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
minor="${K8S_VERSION#*.}"
minor="${minor%%.*}"
major="${K8S_VERSION%%.*}"
ldx=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldx+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldx+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

t0=$(date +%s)
if (( ${#missing[@]} )); then
    # One invocation for all Kubernetes binaries: shared packages compile once, and `-o DIR/`
    # names each binary after its package (kube-apiserver, kubelet, ...).
    log "compiling ${missing[*]} (2 cores: expect several minutes)"
    mpkgs=()
    for name in "${missing[@]}"; do mpkgs+=("k8s.io/kubernetes/cmd/$name"); done
    CGO_ENABLED=0 "${NICE[@]}" "$GO" build -ldflags="-s -w$ldx" -o "$BIN.tmp/" "${mpkgs[@]}"
fi
t1=$(date +%s)
log "${missing[*]:-nothing} built in $((t1 - t0)) s"
if [[ ! -x "$BIN.tmp/etcd" ]]; then
    log "compiling etcd $etcd_version"
    CGO_ENABLED=0 "${NICE[@]}" "$GO" build -ldflags="-s -w" -o "$BIN.tmp/etcd" go.etcd.io/etcd/server/v3
fi
t2=$(date +%s)
log "etcd ready after $((t2 - t1)) s"

{
    for name in "${K8S_BINS[@]}"; do echo "$name v$K8S_VERSION"; done
    echo "etcd $etcd_version"
    echo "go $("$GO" env GOVERSION)"
    echo "built $build_date in $((t2 - start)) s (${missing[*]:-})"
} >>"$BIN.tmp/VERSIONS"
rm -rf "$BIN"
mv "$BIN.tmp" "$BIN"
# Keep go.mod/go.sum (tiny, documents the graph); module and build caches live in Go's own dirs.
log "done in $((t2 - start)) s: $BIN"
printf '%s\n' "$BIN"
