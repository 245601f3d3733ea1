#!/usr/bin/env bash
# Stop/start the throwaway test cluster started by scripts/test.sh, as the OS
# user that owns it.  For tests that need the database to go away and come
# back:
#
#   bash scripts/lib/pg-ctl-as.sh stop|start|restart|status
#
# Reads TEST_PG_BINDIR, TEST_PG_DATADIR, TEST_PG_CTL_USER (empty = current
# user), which scripts/test.sh exports.  `start` waits until the cluster
# accepts connections again; the port is kept in the data directory.
set -euo pipefail

usage() {
    printf 'usage: %s stop|start|restart|status\n' "$0" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
action="$1"

bindir="${TEST_PG_BINDIR:?TEST_PG_BINDIR is not set (run via scripts/test.sh)}"
datadir="${TEST_PG_DATADIR:?TEST_PG_DATADIR is not set (run via scripts/test.sh)}"
ctl_user="${TEST_PG_CTL_USER:-}"
logfile="${TEST_PG_LOGFILE:-$(dirname "${datadir}")/log/postgresql.log}"

run_ctl() {
    if [[ -n "${ctl_user}" && "$(id -un)" != "${ctl_user}" ]]; then
        if [[ "$(id -u)" -ne 0 ]]; then
            printf 'pg-ctl-as: must be root to act as %s\n' "${ctl_user}" >&2
            exit 1
        fi
        (cd / && runuser -u "${ctl_user}" -- "${bindir}/pg_ctl" "$@")
    else
        "${bindir}/pg_ctl" "$@"
    fi
}

case "${action}" in
    stop)
        run_ctl stop -D "${datadir}" -m fast -w -t 30 >/dev/null \
            || run_ctl stop -D "${datadir}" -m immediate -w -t 15 >/dev/null
        ;;
    start)
        run_ctl start -D "${datadir}" -l "${logfile}" -w -t 60 >/dev/null
        ;;
    restart)
        run_ctl restart -D "${datadir}" -l "${logfile}" -m fast -w -t 60 >/dev/null
        ;;
    status)
        run_ctl status -D "${datadir}"
        ;;
    *)
        usage
        ;;
esac
