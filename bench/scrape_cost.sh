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
# BENCH_CLIENT_THREADS (2), BENCH_SCRAPE_EVERY (1 second), LOADGEN (a built bench/loadgen.rs;
# default: built here with `cargo bench --no-run`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "${ROOT}/bench/lib.sh"
log() { printf '[scrape_cost.sh] %s\n' "$*" >&2; }
die() { printf '[scrape_cost.sh] ERROR: %s\n' "$*" >&2; exit 1; }

D="${BENCH_DURATION:-10}"
W="${BENCH_WARMUP:-2}"
REPEAT="${BENCH_REPEAT:-3}"
C="${BENCH_CONNS:-16}"
CT="${BENCH_CLIENT_THREADS:-2}"
EVERY="${BENCH_SCRAPE_EVERY:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ROOT}/target}"

GW_PID="" SCRAPER_PID="" WORK=""
cleanup() {
    local status=$?
    trap '' INT TERM
    [[ -n "${SCRAPER_PID}" ]] && { kill "${SCRAPER_PID}" 2>/dev/null || true; wait "${SCRAPER_PID}" 2>/dev/null || true; }
    if [[ -n "${GW_PID}" ]]; then
        kill -TERM "${GW_PID}" 2>/dev/null || true
        wait "${GW_PID}" 2>/dev/null || true
    fi
    bench_pg_stop
    [[ -n "${WORK}" ]] && rm -rf -- "${WORK}"
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK="$(mktemp -d /tmp/ssdb-scrape.XXXXXX)"
chmod 0755 "${WORK}"

bench_pg_given_or_start scrape

log "building the gateway (bench-release)"
(cd "${ROOT}" && cargo build --profile bench-release --quiet)
bench_loadgen
# A copy with its own name, so nobody's by-name kill of the gateway ends this run.
cp "${CARGO_TARGET_DIR}/bench-release/stonescriptdb-gateway" "${WORK}/ssdb-scrape-gw"

bench_gateway_start "${WORK}/ssdb-scrape-gw" "${WORK}/gateway.log"
GW_PID="${BENCH_GW_PID}"
PORT="${BENCH_GW_PORT}"
bench_gateway_wait "the gateway"
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
