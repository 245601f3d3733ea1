#!/usr/bin/env bash
# What scraping /metrics every second costs /call throughput, measured side by side in one run.
#
#   bash bench/scrape_cost.sh
#
# Starts a throwaway PostgreSQL cluster (or uses DB_HOST/DB_PORT/DB_USER), one gateway
# (bench-release build), creates bench_main with bench/setup.sh, then alternates lookup runs of
# bench/loadgen.rs without and with a scraper that GETs /metrics once a second (curl), BENCH_REPEAT
# pairs, and prints each run, the throughput ratio with/without and the scrape times.
#
# Environment: BENCH_DURATION (10), BENCH_WARMUP (2), BENCH_REPEAT (3), BENCH_CONNS (16),
# BENCH_CLIENT_THREADS (2), BENCH_SCRAPE_EVERY (1 second).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/pg-cluster.sh
source "${ROOT}/scripts/lib/pg-cluster.sh"
log() { printf '[scrape_cost.sh] %s\n' "$*" >&2; }
die() { printf '[scrape_cost.sh] ERROR: %s\n' "$*" >&2; exit 1; }

D="${BENCH_DURATION:-10}"
W="${BENCH_WARMUP:-2}"
REPEAT="${BENCH_REPEAT:-3}"
C="${BENCH_CONNS:-16}"
CT="${BENCH_CLIENT_THREADS:-2}"
EVERY="${BENCH_SCRAPE_EVERY:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ROOT}/target}"

CLUSTER_DIR="" GW_PID="" SCRAPER_PID="" WORK=""
cleanup() {
    local status=$?
    trap '' INT TERM
    [[ -n "${SCRAPER_PID}" ]] && { kill "${SCRAPER_PID}" 2>/dev/null || true; wait "${SCRAPER_PID}" 2>/dev/null || true; }
    if [[ -n "${GW_PID}" ]]; then
        kill -TERM "${GW_PID}" 2>/dev/null || true
        wait "${GW_PID}" 2>/dev/null || true
    fi
    if [[ -n "${CLUSTER_DIR}" ]]; then
        pg_cluster_stop "${CLUSTER_DIR}" || true
        rm -rf -- "${CLUSTER_DIR}"
    fi
    [[ -n "${WORK}" ]] && rm -rf -- "${WORK}"
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK="$(mktemp -d /tmp/ssdb-scrape.XXXXXX)"
chmod 0755 "${WORK}"

if [[ -n "${DB_HOST:-}" && -n "${DB_PORT:-}" ]]; then
    DB_USER="${DB_USER:-postgres}"
    pg_find_bindir || true
else
    pg_ensure_installed
    CLUSTER_DIR="$(mktemp -d /tmp/ssdb-scrape-pg.XXXXXX)"
    pg_cluster_init "${CLUSTER_DIR}" test
    DB_PORT="$(pg_free_port)"
    pg_cluster_start "${CLUSTER_DIR}" "${DB_PORT}" || die "could not start the throwaway cluster"
    DB_HOST="$(pg_socketdir "${CLUSTER_DIR}")"
    DB_USER=postgres
fi
export DB_HOST DB_PORT DB_USER
PSQL=psql
[[ -n "${PG_BINDIR}" && -x "${PG_BINDIR}/psql" ]] && PSQL="${PG_BINDIR}/psql"
export PSQL

log "building the gateway (bench-release) and the load generator"
(cd "${ROOT}" && cargo build --profile bench-release --quiet)
LOADGEN="$(cd "${ROOT}" && cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null \
    | grep '"name":"loadgen"' | grep -o '"executable":"[^"]*"' | tail -n 1 | sed 's/"executable":"\(.*\)"/\1/')"
[[ -n "${LOADGEN}" && -x "${LOADGEN}" ]] || die "could not build bench/loadgen.rs"
# A copy with its own name, so nobody's by-name kill of the gateway ends this run.
cp "${CARGO_TARGET_DIR}/bench-release/stonescriptdb-gateway" "${WORK}/ssdb-scrape-gw"

PORT="$(pg_free_port)"
(cd "${WORK}" && exec env DB_HOST="${DB_HOST}" DB_PORT="${DB_PORT}" DB_USER="${DB_USER}" GATEWAY_HOST=127.0.0.1 \
    GATEWAY_PORT="${PORT}" LOG_LEVEL=warn "${WORK}/ssdb-scrape-gw" >"${WORK}/gateway.log" 2>&1) &
GW_PID=$!
for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:${PORT}/health" 2>/dev/null && break
    kill -0 "${GW_PID}" 2>/dev/null || { cat "${WORK}/gateway.log" >&2; die "the gateway exited"; }
    sleep 0.1
done
GATEWAY_URL="http://127.0.0.1:${PORT}" PSQL="${PSQL}" bash "${ROOT}/bench/setup.sh"

# Scrapes /metrics every EVERY seconds; one line per scrape: seconds it took, bytes.
scraper() {
    while true; do
        curl -fsS -o /dev/null -w '%{time_total} %{size_download}\n' "http://127.0.0.1:${PORT}/metrics" || true
        sleep "${EVERY}"
    done
}

run() {
    "${LOADGEN}" --addr "127.0.0.1:${PORT}" --connections "${C}" --threads "${CT}" --duration "${D}" \
        --warmup "${W}" --quiet | sed -n 's/.*rps=\([0-9.]*\).*p99_us=\([0-9]*\).*/\1 \2/p'
}

printf '%-8s %-4s %10s %8s\n' run pair rps p99_us
without=() with=()
for i in $(seq "${REPEAT}"); do
    read -r rps p99 < <(run)
    printf '%-8s %-4s %10s %8s\n' plain "${i}" "${rps}" "${p99}"
    without+=("${rps}")
    scraper >>"${WORK}/scrapes" &
    SCRAPER_PID=$!
    read -r rps p99 < <(run)
    kill "${SCRAPER_PID}" 2>/dev/null || true
    wait "${SCRAPER_PID}" 2>/dev/null || true
    SCRAPER_PID=""
    printf '%-8s %-4s %10s %8s\n' scraped "${i}" "${rps}" "${p99}"
    with+=("${rps}")
done
mean() { printf '%s\n' "$@" | awk '{s += $1} END {printf "%.0f", s / NR}'; }
A="$(mean "${without[@]}")" B="$(mean "${with[@]}")"
awk -v a="${A}" -v b="${B}" 'BEGIN {printf "mean rps without scraping %d, with a scrape every '"${EVERY}"' s %d: ratio %.3f\n", a, b, b / a}'
sort -n "${WORK}/scrapes" | awk '{t[NR] = $1 * 1000; bytes = $2} END {printf "scrapes under load: %d, p50 %.2f ms, max %.2f ms, %d bytes each\n", NR, t[int((NR + 1) / 2)], t[NR], bytes}'
log "machine: $(nproc) cores; gateway $(curl -fsS "http://127.0.0.1:${PORT}/health" | sed -n 's/.*"event_loops":\([0-9]*\).*/\1/p') event loops; ${C} connections, ${D} s runs"
