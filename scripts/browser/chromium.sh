#!/usr/bin/env bash
# Debian's Chromium for the web app's browser tests (driven by Playwright through the npm
# package playwright-core, which never downloads a browser of its own).
#
#   scripts/browser/chromium.sh install   install chromium if it is missing (apt-get)
#   scripts/browser/chromium.sh path      print the browser's path (exit 1 when missing)
set -euo pipefail

log() { echo "chromium: $*" >&2; }
die() { log "$*"; exit 1; }

if [[ "$(id -u)" == 0 ]]; then
    apt_get() { DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
else
    apt_get() { sudo env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
fi

chromium_bin() { command -v chromium || { [[ -x /usr/bin/chromium ]] && echo /usr/bin/chromium; }; }

install_chromium() {
    if [[ -n "$(chromium_bin)" ]]; then return; fi
    log "chromium not found; installing Debian's chromium"
    command -v apt-get > /dev/null || die "no apt-get here: install chromium by hand"
    local apt_log="${TMPDIR:-/tmp}/brokercore-chromium-apt.log"
    if ! apt_get install -y --no-install-recommends chromium > "$apt_log" 2>&1; then
        log "apt-get install failed; updating the package lists and trying again"
        apt_get update > "$apt_log" 2>&1 || { tail -20 "$apt_log" >&2; die "apt-get update failed"; }
        apt_get install -y --no-install-recommends chromium > "$apt_log" 2>&1 \
            || { tail -20 "$apt_log" >&2; die "apt-get install -y chromium failed"; }
    fi
    [[ -n "$(chromium_bin)" ]] || die "installed chromium, but there is no chromium binary"
    log "installed $("$(chromium_bin)" --version 2> /dev/null || echo chromium)"
}

case "${1:-}" in
    install) install_chromium ;;
    path) chromium_bin || die "chromium is not installed: scripts/browser/chromium.sh install" ;;
    *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
