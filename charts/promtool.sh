#!/usr/bin/env bash
# Find or build `promtool` for tests/notifications/test_monitoring.py (PrometheusRule checks), from Prometheus'
# own Go module (github.com/prometheus/prometheus/cmd/promtool on the Go module proxy), like charts/helm.sh.
#
# Prints the binary's path on stdout (and nothing else); progress goes to stderr.
# Order: $PROMTOOL, `promtool` on PATH, the cache (${KUBETASKS_CACHE:-~/.cache/kubetasks}/promtool/v<version>/),
# then a build into that cache. Knobs: KUBETASKS_PROMTOOL_VERSION (a Go module version), KUBETASKS_CACHE, GO.
set -euo pipefail

VERSION="${KUBETASKS_PROMTOOL_VERSION:-0.316.0}"
VERSION="${VERSION#v}"
log() { printf 'promtool.sh: %s\n' "$*" >&2; }

if [[ -n "${PROMTOOL:-}" && -x "$PROMTOOL" ]]; then printf '%s\n' "$PROMTOOL"; exit 0; fi
if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi

DEST="${KUBETASKS_CACHE:-$HOME/.cache/kubetasks}/promtool/v$VERSION"
if [[ -x "$DEST/promtool" ]]; then printf '%s\n' "$DEST/promtool"; exit 0; fi

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x "$GO" ]] || { log "no Go toolchain (set GO=/path/to/go)"; exit 1; }

mkdir -p "$DEST"
exec 9>"$DEST/.lock"
flock 9
if [[ -x "$DEST/promtool" ]]; then printf '%s\n' "$DEST/promtool"; exit 0; fi

log "building promtool (module v$VERSION) from the Go module proxy (several minutes, lowest CPU priority)"
GOBIN="$DEST" GOFLAGS="-trimpath" nice -n 19 "$GO" install -ldflags="-s -w" \
    "github.com/prometheus/prometheus/cmd/promtool@v$VERSION" >&2
[[ -x "$DEST/promtool" ]] || { log "build produced no binary"; exit 1; }
printf '%s\n' "$DEST/promtool"
