#!/usr/bin/env bash
# Build the images the test cluster runs, without any registry:
#   local/debian:bookworm-minbase  debootstrap --variant=minbase, `docker import`ed
#   local/python:3.11-bookworm     that base + Debian's python3/python3-venv (+ this machine's CA bundle for pip)
#   kubetasks:dev                  the repository's Dockerfile with PYTHON_IMAGE=local/python:3.11-bookworm
#   local/pause:kubetasks          a static Go pause binary (containerd's sandbox image on the test node)
#
# Every step is cached by a content hash under ${KUBETASKS_CACHE:-~/.cache/kubetasks}/images: the
# rootfs tarball and `docker save` archives ready for `ctr -n k8s.io images import`. A warm run
# does not start Docker at all.
#
# Prints two lines on stdout: the kubetasks image archive, then the pause image archive.
# Docker: $DOCKER_HOST when set, else a private dockerd (--bridge=none --iptables=false, own
# socket and dirs under the cache), stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE="${KUBETASKS_CACHE:-$HOME/.cache/kubetasks}/images"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
log() { printf 'images.sh: %s\n' "$*" >&2; }
NICE=(nice -n 19)

mirror=$(awk '$1 == "URIs:" { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror="${KUBETASKS_DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}"
ca_bundle="${KUBETASKS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

hash_of() { cat "$@" | sha256sum | cut -c1-16; }
base_key=$(printf 'minbase bookworm %s v2' "$mirror" | sha256sum | cut -c1-16)
python_key=$(cat <(echo "$base_key") .ci/images/python-base.Dockerfile "$ca_bundle" | sha256sum | cut -c1-16)
# The kubetasks image: the Dockerfile, its build context (as .dockerignore admits it) and the base.
app_key=$( (echo "$python_key"; cat Dockerfile .dockerignore pyproject.toml README.md;
            find worker operator -type f -not -name '*.pyc' -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs cat) \
          | sha256sum | cut -c1-16)
pause_key=$(hash_of .ci/images/pause.go)

rootfs_tar="$CACHE/debian-bookworm-minbase-$base_key.tar"
python_tar="$CACHE/python-base-$python_key.tar"
app_tar="$CACHE/kubetasks-dev-$app_key.tar"
pause_tar="$CACHE/pause-$pause_key.tar"

if [[ -s "$app_tar" && -s "$pause_tar" ]]; then
    log "cached: $(basename "$app_tar") $(basename "$pause_tar")"
    printf '%s\n%s\n' "$app_tar" "$pause_tar"
    exit 0
fi

# -- Docker -------------------------------------------------------------------------------------
dockerd_pid=""
stop_dockerd() {
    if [[ -n "$dockerd_pid" ]] && kill -0 "$dockerd_pid" 2>/dev/null; then
        kill "$dockerd_pid"
        for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$dockerd_pid" 2>/dev/null || true
    fi
}
trap stop_dockerd EXIT
if [[ -z "${DOCKER_HOST:-}" ]]; then
    command -v dockerd >/dev/null || { log "no dockerd (apt-get install docker.io) and no DOCKER_HOST"; exit 1; }
    ddir="$CACHE/dockerd"
    mkdir -p "$ddir"
    export DOCKER_HOST="unix://$ddir/docker.sock"
    # Loopback only: no bridge, no iptables rules; builds use --network host.
    dockerd --iptables=false --ip6tables=false --bridge=none --data-root "$ddir/root" --exec-root "$ddir/exec" \
        --pidfile "$ddir/docker.pid" -H "$DOCKER_HOST" >"$ddir/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { log "dockerd did not start:"; tail -20 "$ddir/dockerd.log" >&2; exit 1; }
    log "dockerd $dockerd_pid on $DOCKER_HOST"
fi
export DOCKER_BUILDKIT=0
t_start=$(date +%s)

# -- base ----------------------------------------------------------------------------------------
if [[ ! -s "$rootfs_tar" ]]; then
    command -v debootstrap >/dev/null || { log "no debootstrap (apt-get install debootstrap)"; exit 1; }
    rootfs=$(mktemp -d /tmp/kubetasks-rootfs.XXXXXX)
    log "debootstrap --variant=minbase bookworm from $mirror"
    "${NICE[@]}" debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf "$rootfs_tar.tmp" .
    mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$rootfs"
fi
docker import - local/debian:bookworm-minbase <"$rootfs_tar" >/dev/null
t_base=$(date +%s)
log "base ready in $((t_base - t_start)) s"

if [[ -s "$python_tar" ]]; then
    docker load -i "$python_tar" >/dev/null
else
    ctx=$(mktemp -d /tmp/kubetasks-pybase.XXXXXX)
    cp .ci/images/python-base.Dockerfile "$ctx/Dockerfile"
    cp "$ca_bundle" "$ctx/ca-certificates.crt"
    "${NICE[@]}" docker build -q --network host -t local/python:3.11-bookworm "$ctx" >&2
    rm -rf "$ctx"
    docker save -o "$python_tar.tmp" local/python:3.11-bookworm
    mv "$python_tar.tmp" "$python_tar"
fi
t_py=$(date +%s)
log "python base ready in $((t_py - t_base)) s"

# -- kubetasks:dev ---------------------------------------------------------------------------------
if [[ ! -s "$app_tar" ]]; then
    "${NICE[@]}" docker build --network host --build-arg PYTHON_IMAGE=local/python:3.11-bookworm \
        --label "dev.kubetasks.content-hash=$app_key" -t kubetasks:dev "$REPO" >&2
    docker save -o "$app_tar.tmp" kubetasks:dev
    mv "$app_tar.tmp" "$app_tar"
    docker image inspect --format 'kubetasks:dev {{.Size}} bytes' kubetasks:dev >"$CACHE/kubetasks-dev-$app_key.size"
    log "$(cat "$CACHE/kubetasks-dev-$app_key.size")"
fi
t_app=$(date +%s)
log "kubetasks:dev ready in $((t_app - t_py)) s"

# -- pause ---------------------------------------------------------------------------------------
if [[ ! -s "$pause_tar" ]]; then
    GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
    pdir=$(mktemp -d /tmp/kubetasks-pause.XXXXXX)
    (cd "$pdir" && cp "$REPO/.ci/images/pause.go" . && "$GO" mod init kubetasks.dev/pause >/dev/null 2>&1 \
        && CGO_ENABLED=0 "${NICE[@]}" "$GO" build -trimpath -ldflags='-s -w' -o pause .)
    tar -C "$pdir" -c pause | docker import -c 'ENTRYPOINT ["/pause"]' - local/pause:kubetasks >/dev/null
    rm -rf "$pdir"
    docker save -o "$pause_tar.tmp" local/pause:kubetasks
    mv "$pause_tar.tmp" "$pause_tar"
fi
log "all images in $(( $(date +%s) - t_start )) s"
# Older archives of the same kind are dead weight.
for f in "$CACHE"/kubetasks-dev-*.tar "$CACHE"/kubetasks-dev-*.size "$CACHE"/python-base-*.tar "$CACHE"/pause-*.tar \
         "$CACHE"/debian-bookworm-minbase-*.tar; do
    case "$f" in "$app_tar"|"${app_tar%.tar}.size"|"$pause_tar"|"$python_tar"|"$rootfs_tar") ;; *) rm -f "$f" ;; esac
done
docker image prune -f >/dev/null 2>&1 || true  # earlier builds' layers in the private daemon's data root
printf '%s\n%s\n' "$app_tar" "$pause_tar"
