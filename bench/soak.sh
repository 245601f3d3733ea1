#!/usr/bin/env bash
# Soak: the gateway under mixed, partly hostile load for a long time, reporting every slice whether
# anything grows (RSS, open files, threads) or slows (p50/p99).
#
#   bash bench/soak.sh                 # 10 minutes
#   SOAK_SECS=180 bash bench/soak.sh   # shorter
#
# Load, all at once, on a throwaway PostgreSQL cluster:
#   calls      bench/loadgen.rs, 16 keep-alive connections, in slices of SOAK_SLICE seconds (30)
#   deploys    a /migrate of the bench platform every 20 s (functions unchanged: tracked, skipped)
#   malformed  a garbage request, a bad JSON body and a request over the body limit, every second
#   slowloris  20 connections that send one header byte every 5 s and never finish
# One line per slice: req/s, p50, p99, errors, RSS, open fds, threads. Everything is stopped on exit.
# LOADGEN=path reuses a built bench/loadgen.rs (default: built here with `cargo bench --no-run`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "${ROOT}/bench/lib.sh"

log() { printf '[soak.sh] %s\n' "$*" >&2; }
die() { printf '[soak.sh] ERROR: %s\n' "$*" >&2; exit 1; }

SECS="${SOAK_SECS:-600}"
SLICE="${SOAK_SLICE:-30}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ROOT}/target}"

GW_PID=""
WORK="$(mktemp -d /tmp/ssdb-soak.XXXXXX)"
chmod 0755 "${WORK}"
# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local status=$?
    trap '' INT TERM
    jobs -p | xargs -r kill 2>/dev/null || true
    if [[ -n "${GW_PID}" ]]; then
        kill -TERM "${GW_PID}" 2>/dev/null || true
        wait "${GW_PID}" 2>/dev/null || true
    fi
    bench_pg_stop
    rm -rf -- "${WORK}"
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bench_pg_start soak

log "building the gateway (bench-release)"
(cd "${ROOT}" && cargo build --profile bench-release --quiet)
bench_loadgen
# A copy under its own name (why: bench/lib.sh).
cp "${CARGO_TARGET_DIR}/bench-release/stonescriptdb-gateway" "${WORK}/ssdb-soak-gw"

bench_gateway_start "${WORK}/ssdb-soak-gw" "${WORK}/gateway.log" MAX_CALL_BODY_BYTES=65536
GW_PID="${BENCH_GW_PID}"
PORT="${BENCH_GW_PORT}"
bench_gateway_wait "the gateway"
URL="http://127.0.0.1:${PORT}"
GATEWAY_URL="${URL}" PSQL="${PSQL}" bash "${ROOT}/bench/setup.sh"
tar -czf "${WORK}/schema.tgz" -C "${ROOT}/bench/schema" tables migrations functions

deploys() {
    while true; do
        sleep 20
        curl -sS -o /dev/null -F platform=bench -F "schema=@${WORK}/schema.tgz" "${URL}/migrate" || true
    done
}
malformed() {
    local big
    big="$(head -c 70000 /dev/zero | tr '\0' 'x')"
    while true; do
        { exec 3<>"/dev/tcp/127.0.0.1/${PORT}" && printf 'GARBAGE \x01\x02 HTTP/9\r\n\r\n' >&3 && timeout 2 cat <&3 >/dev/null; exec 3>&-; } 2>/dev/null || true
        curl -sS -o /dev/null "${URL}/call" -d '{"platform":"bench","function":' || true
        curl -sS -o /dev/null "${URL}/call" -d "{\"platform\":\"${big}\"}" || true
        sleep 1
    done
}
slowloris() {
    while true; do
        { exec 3<>"/dev/tcp/127.0.0.1/${PORT}" || { sleep 1; continue; }
            printf 'POST /call HTTP/1.1\r\n' >&3
            while printf 'X' >&3 2>/dev/null; do sleep 5; done
            exec 3>&-; } 2>/dev/null || true
    done
}
deploys &
malformed &
for _ in $(seq 20); do slowloris & done

sample() {
    local rss fds threads
    rss="$(awk '/^VmRSS:/ {print $2}' "/proc/${GW_PID}/status")"
    threads="$(awk '/^Threads:/ {print $2}' "/proc/${GW_PID}/status")"
    fds="$(find "/proc/${GW_PID}/fd" -mindepth 1 -maxdepth 1 | wc -l)"
    printf '%s %s %s' "${rss}" "${fds}" "${threads}"
}

printf '%8s %9s %9s %9s %7s %9s %6s %8s\n' "t_s" "req/s" "p50_us" "p99_us" "errors" "rss_kB" "fds" "threads"
start=$(date +%s)
while (( $(date +%s) - start < SECS )); do
    kill -0 "${GW_PID}" 2>/dev/null || { tail -n 40 "${WORK}/gateway.log" >&2; die "the gateway exited"; }
    out="$("${LOADGEN}" --addr "127.0.0.1:${PORT}" --connections 16 --threads 2 --duration "${SLICE}" --warmup 0 \
        --function bench_get_item --params '[{rand}]' --rand 1:10000 2>&1 || true)"
    line="$(grep '^RESULT ' <<<"${out}" || echo "RESULT rps=- p50_us=- p99_us=- errors=-")"
    get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"${line}"; }
    read -r rss fds threads <<<"$(sample)"
    printf '%8s %9s %9s %9s %7s %9s %6s %8s\n' "$(( $(date +%s) - start ))" "$(get rps)" "$(get p50_us)" \
        "$(get p99_us)" "$(get errors)" "${rss}" "${fds}" "${threads}"
done
log "gateway warnings and errors seen: $(grep -c -E ' (warn|error) ' "${WORK}/gateway.log" || true)"
