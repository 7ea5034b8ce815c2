#!/usr/bin/env bash
# Debian's Chromium for the web app's browser tests (driven by Playwright through the npm
# package playwright-core, which never downloads a browser of its own).
#
#   scripts/browser/chromium.sh install   install chromium if it is missing (apt-get)
#   scripts/browser/chromium.sh path      print the browser's path (exit 1 when missing)
set -euo pipefail

log() { echo "chromium: $*" >&2; }
die() { log "$*"; exit 1; }

source "$(dirname "$0")/../lib/apt.sh"

chromium_bin() { command -v chromium || { [[ -x /usr/bin/chromium ]] && echo /usr/bin/chromium; }; }

install_chromium() {
    if [[ -n "$(chromium_bin)" ]]; then return; fi
    log "chromium not found; installing Debian's chromium"
    apt_install chromium chromium --no-install-recommends
    [[ -n "$(chromium_bin)" ]] || die "installed chromium, but there is no chromium binary"
    log "installed $("$(chromium_bin)" --version 2> /dev/null || echo chromium)"
}

case "${1:-}" in
    install) install_chromium ;;
    path) chromium_bin || die "chromium is not installed: scripts/browser/chromium.sh install" ;;
    *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
