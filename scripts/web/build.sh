#!/usr/bin/env bash
# The web app (web/): its npm packages as package-lock.json pins them (npm ci), then the
# type check and Vite's build into web/dist, which the edge serves at /. Each step is
# skipped when it is up to date: npm ci when the lock file is the one installed, the build
# when nothing under web/ that goes into it is newer than the last build.
#
#   scripts/web/build.sh          (make web; make up and make test run it)
#
# Needs Node.js 20.19 or newer (Vite's floor) with npm. Playwright (playwright-core, for
# the browser tests) never downloads a browser: the tests use Debian's chromium.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
web="$(cd "$here/../../web" && pwd)"
log() { echo "web: $*" >&2; }
die() { log "$*"; exit 1; }

command -v node > /dev/null && command -v npm > /dev/null \
    || die "Node.js and npm are needed (20.19 or newer): https://nodejs.org or your package manager"
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
    || die "Node.js $(node --version) is too old: Vite needs 20.19 or newer"

cd "$web"
stamp=node_modules/.brokercore-lock
lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2> /dev/null)" != "$lock_sum" ]]; then
    log "npm ci (package-lock.json changed or nothing installed)"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >&2
    echo "$lock_sum" > "$stamp"
fi

built=dist/.built
if [[ -f "$built" && -z "$(find ./*.html src vite.config.ts tsconfig.json package-lock.json -newer "$built" -print -quit)" ]]; then
    log "dist is up to date"
    exit 0
fi
log "building dist/"
npx --no-install tsc --noEmit >&2
npx --no-install vite build --logLevel warn >&2
touch "$built"
log "built $web/dist"
