#!/usr/bin/env bash
# PostgreSQL for trio-grains-postgres's tests and benchmarks.
#
#   bash scripts/postgres.sh install   install the server programs (Debian/Ubuntu: apt-get
#                                      install postgresql) unless initdb is already under
#                                      /usr/lib/postgresql/*/bin; quiet and idempotent
#
# Tests then start throwaway servers themselves (trio_grains_postgres.testing); nothing is
# started here and no system service is configured.
set -euo pipefail

have_server() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

# Run a command; print its output only if it fails.
quietly() {
    local out
    if ! out=$("$@" 2>&1); then
        echo "$out" >&2
        echo "postgres.sh: failed: $*" >&2
        exit 1
    fi
}

install() {
    if have_server; then
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        echo "postgres.sh: no apt-get here; install the PostgreSQL server programs" \
             "(initdb, pg_ctl) with your package manager" >&2
        exit 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    echo "postgres.sh: installing PostgreSQL (apt-get install postgresql) ..." >&2
    quietly "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    quietly "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends postgresql
    if ! have_server; then
        echo "postgres.sh: apt-get installed postgresql, but no initdb is under" \
             "/usr/lib/postgresql/*/bin" >&2
        exit 1
    fi
}

case "${1:-}" in
    install) install ;;
    *)
        echo "usage: bash scripts/postgres.sh install" >&2
        exit 2
        ;;
esac
