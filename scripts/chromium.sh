#!/usr/bin/env bash
# Headless Chromium for trio-grains-dashboard's browser test (and its docs screenshot).
#
#   bash scripts/chromium.sh install   install Debian's chromium (apt-get install chromium)
#                                      unless a chromium is already on PATH; quiet and
#                                      idempotent
#
# The test runs `chromium --headless` itself and skips when it is missing; nothing is
# started here. (Playwright is not used: it downloads browsers at run time.)
set -euo pipefail

have_chromium() {
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null
}

# Run a command; print its output only if it fails.
quietly() {
    local out
    if ! out=$("$@" 2>&1); then
        echo "$out" >&2
        echo "chromium.sh: failed: $*" >&2
        exit 1
    fi
}

install() {
    if have_chromium; then
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        echo "chromium.sh: no apt-get here; install chromium with your package manager" >&2
        exit 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    echo "chromium.sh: installing chromium (apt-get install chromium) ..." >&2
    quietly "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    quietly "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends chromium
    if ! have_chromium; then
        echo "chromium.sh: apt-get installed chromium, but no chromium is on PATH" >&2
        exit 1
    fi
}

case "${1:-}" in
    install) install ;;
    *)
        echo "usage: bash scripts/chromium.sh install" >&2
        exit 2
        ;;
esac
