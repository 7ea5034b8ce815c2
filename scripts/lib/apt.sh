# Shared by the scripts that install a Debian package when it is missing. Source it; the
# caller defines log() and die().

if [[ "$(id -u)" == 0 ]]; then
    apt_get() { DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
else
    apt_get() { sudo env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
fi

# apt_install NAME PACKAGE [APT-GET OPTIONS...]: install PACKAGE, updating the package
# lists and trying once more when the first try fails (a fresh machine's lists are
# often stale); the end of apt-get's log and die() when it still fails. NAME names the
# log file.
apt_install() {
    local name="$1" package="$2"
    shift 2
    command -v apt-get > /dev/null || die "no apt-get here: install $package by hand"
    local apt_log="${TMPDIR:-/tmp}/brokercore-$name-apt.log"
    if ! apt_get install -y "$@" "$package" > "$apt_log" 2>&1; then
        log "apt-get install failed; updating the package lists and trying again"
        apt_get update > "$apt_log" 2>&1 || { tail -20 "$apt_log" >&2; die "apt-get update failed"; }
        apt_get install -y "$@" "$package" > "$apt_log" 2>&1 \
            || { tail -20 "$apt_log" >&2; die "apt-get install -y $package failed"; }
    fi
}
