#!/usr/bin/env bash
# Find or build a `helm` binary for tests/unit/test_chart.py, from helm's official Go module
# (helm.sh/helm/v3 on the Go module proxy): no downloads of prebuilt binaries needed.
#
# Prints the binary's path on stdout (and nothing else); progress goes to stderr.
# Order: $HELM, `helm` on PATH, the cache (${KUBETASKS_CACHE:-~/.cache/kubetasks}/helm/v<version>/helm),
# then a build into that cache. Knobs: KUBETASKS_HELM_VERSION, KUBETASKS_CACHE, GO.
set -euo pipefail

VERSION="${KUBETASKS_HELM_VERSION:-3.22.0}"
VERSION="${VERSION#v}"
log() { printf 'helm.sh: %s\n' "$*" >&2; }

if [[ -n "${HELM:-}" && -x "$HELM" ]]; then printf '%s\n' "$HELM"; exit 0; fi
if command -v helm >/dev/null 2>&1; then command -v helm; exit 0; fi

DEST="${KUBETASKS_CACHE:-$HOME/.cache/kubetasks}/helm/v$VERSION"
if [[ -x "$DEST/helm" ]]; then printf '%s\n' "$DEST/helm"; exit 0; fi

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x "$GO" ]] || { log "no Go toolchain (set GO=/path/to/go)"; exit 1; }

mkdir -p "$DEST"
exec 9>"$DEST/.lock"
flock 9  # two test runs at once: one builds, the other reuses
if [[ -x "$DEST/helm" ]]; then printf '%s\n' "$DEST/helm"; exit 0; fi

log "building helm v$VERSION from the Go module proxy (a few minutes, lowest CPU priority)"
# Frugal: nice, stripped, no local paths; GOBIN keeps it out of ~/go/bin.
GOBIN="$DEST" GOFLAGS="-trimpath" nice -n 19 "$GO" install -ldflags="-s -w" "helm.sh/helm/v3/cmd/helm@v$VERSION" >&2
"$DEST/helm" version --short >&2
printf '%s\n' "$DEST/helm"
