# shellcheck shell=bash
# Tools some tests need besides PostgreSQL: promtool (Debian package `prometheus`) checks /metrics,
# chromium renders the status page. As root they are installed with apt-get; otherwise the command
# to install them is printed. Tests that need a missing tool skip with the reason, except under
# CI=true, where a missing tool fails them.

# tool_ensure COMMAND PACKAGE
tool_ensure() {
    local cmd="$1" pkg="$2"
    if command -v "${cmd}" >/dev/null 2>&1; then
        return 0
    fi
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        pg_log "installing ${pkg} for ${cmd} (apt-get)"
        if pg_apt_install "${pkg}" >&2 && command -v "${cmd}" >/dev/null 2>&1; then
            return 0
        fi
        pg_log "could not install ${pkg}; tests that need ${cmd} will skip (or fail under CI=true)"
        return 1
    fi
    pg_log "${cmd} not found; tests that need it skip (fail under CI=true). Install it with:"
    pg_log "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${pkg}"
    return 1
}
