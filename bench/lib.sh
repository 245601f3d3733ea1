# shellcheck shell=bash
# What the benchmark scripts of bench/ share: the throwaway PostgreSQL cluster they measure against,
# the load generator (bench/loadgen.rs) and the start of a gateway under test. Each script still owns
# its work directory, its cleanup trap and what it measures.
#
# The sourcing script uses `set -euo pipefail`, sets ROOT (the repository) and, before starting a
# gateway, WORK (its work directory), and defines `log` and `die`, which print with its own prefix.

# shellcheck source=scripts/lib/pg-cluster.sh
source "${ROOT}/scripts/lib/pg-cluster.sh"

BENCH_PG_DIR=""
BENCH_GW_PID=""
BENCH_GW_PORT=""
BENCH_GW_LOG=""

# bench_pg_start TAG — a throwaway cluster in /tmp/ssdb-TAG-pg.XXXXXX on a free port (PostgreSQL is
# installed first if it is missing). Sets BENCH_PG_DIR (bench_pg_stop stops and removes it), exports
# DB_HOST (its socket directory), DB_PORT and DB_USER=postgres, and sets PSQL.
bench_pg_start() {
    pg_ensure_installed
    BENCH_PG_DIR="$(mktemp -d "/tmp/ssdb-$1-pg.XXXXXX")"
    pg_cluster_init "${BENCH_PG_DIR}" test
    DB_PORT="$(pg_cluster_start_free "${BENCH_PG_DIR}")" || die "could not start the throwaway cluster"
    DB_HOST="$(pg_socketdir "${BENCH_PG_DIR}")"
    DB_USER=postgres
    export DB_HOST DB_PORT DB_USER
    bench_psql
}

# bench_pg_given_or_start TAG — the PostgreSQL that DB_HOST and DB_PORT name when both are set (DB_USER
# defaults to postgres), else a throwaway cluster as bench_pg_start TAG starts it.
bench_pg_given_or_start() {
    if [[ -z "${DB_HOST:-}" || -z "${DB_PORT:-}" ]]; then
        bench_pg_start "$1"
        return
    fi
    DB_USER="${DB_USER:-postgres}"
    export DB_HOST DB_PORT DB_USER
    pg_find_bindir || true
    bench_psql
    log "using the given PostgreSQL at ${DB_HOST}:${DB_PORT} as ${DB_USER}"
}

# Sets and exports PSQL: the psql beside the server binaries, else the one on PATH.
bench_psql() {
    PSQL=psql
    if [[ -n "${PG_BINDIR}" && -x "${PG_BINDIR}/psql" ]]; then
        PSQL="${PG_BINDIR}/psql"
    fi
    export PSQL
}

# For the cleanup trap: stops and removes the cluster of bench_pg_start, if it made one.
bench_pg_stop() {
    [[ -n "${BENCH_PG_DIR}" ]] || return 0
    pg_cluster_stop "${BENCH_PG_DIR}" || true
    rm -rf -- "${BENCH_PG_DIR}"
}

# bench_loadgen — sets LOADGEN to the built bench/loadgen.rs: the one LOADGEN already names, else the
# one `cargo bench --no-run` builds (in CARGO_TARGET_DIR).
bench_loadgen() {
    if [[ -z "${LOADGEN:-}" ]]; then
        log "building the load generator"
        LOADGEN="$(cd "${ROOT}" && cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null \
            | grep '"name":"loadgen"' | grep -o '"executable":"[^"]*"' | tail -n 1 \
            | sed 's/"executable":"\(.*\)"/\1/')"
    fi
    [[ -n "${LOADGEN}" && -x "${LOADGEN}" ]] || die "could not build bench/loadgen.rs"
}

# bench_gateway_start BIN LOG [KEY=VALUE...] — starts the gateway BIN in the background from WORK
# (so that no .env of the caller's reaches it) on a free port of 127.0.0.1, with the cluster's DB_HOST,
# DB_PORT and DB_USER, LOG_LEVEL=warn and then the KEY=VALUE words (a later word wins); its output
# goes to LOG. Sets BENCH_GW_PID and BENCH_GW_PORT; bench_gateway_wait waits until it answers.
#
# BIN should be a copy in WORK under a name of its own (ssdb-…): on a shared machine a run was ended
# by someone's `pkill stonescriptdb-gateway` (the gateway exited 0, a graceful SIGTERM, its log empty).
bench_gateway_start() {
    local bin="$1"
    BENCH_GW_LOG="$2"
    shift 2
    BENCH_GW_PORT="$(pg_free_port)"
    (cd "${WORK}" && exec env DB_HOST="${DB_HOST}" DB_PORT="${DB_PORT}" DB_USER="${DB_USER}" GATEWAY_HOST=127.0.0.1 \
        GATEWAY_PORT="${BENCH_GW_PORT}" LOG_LEVEL=warn "$@" "${bin}" >"${BENCH_GW_LOG}" 2>&1) &
    BENCH_GW_PID=$!
}

# bench_gateway_wait WHAT — waits up to 10 s for /health of the gateway bench_gateway_start started
# last. Dies "WHAT exited", its log on stderr, if it exits first; "WHAT does not answer /health" if
# it never answers (it stays running: the caller's cleanup stops it).
bench_gateway_wait() {
    local what="$1"
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "http://127.0.0.1:${BENCH_GW_PORT}/health" 2>/dev/null && return 0
        kill -0 "${BENCH_GW_PID}" 2>/dev/null || { cat "${BENCH_GW_LOG}" >&2; die "${what} exited"; }
        sleep 0.1
    done
    curl -fsS -o /dev/null "http://127.0.0.1:${BENCH_GW_PORT}/health" || die "${what} does not answer /health"
}
