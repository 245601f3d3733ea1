#!/usr/bin/env bash
# Settings sweep of /call: one throwaway PostgreSQL, one gateway binary, every setting of CFGS in turn
# at every concurrency of SWEEP_CLIENTS, interleaved (the order flipped every round), so that the
# settings of one run see the same machine noise. Per run: throughput, p50/p99, µs of gateway CPU per
# call, and what /metrics counted meanwhile (backend connects and closes, traffic between loops), in
# all and after the warmup (under steady load the connects and closes there should be 0).
#
#   bash bench/sweep.sh                      # the pool x loops sweep of the 2-core reproduction
#   CFGS="MAX_CONNECTIONS_PER_POOL=128,GATEWAY_THREADS=8 GATEWAY_THREADS=2" bash bench/sweep.sh
#
# Environment (all optional):
#   CFGS            settings to compare, one word each, several settings of one word joined with commas;
#                   a word may name its own binary with BIN=/path (an A/B of builds under settings).
#                   Default: MAX_CONNECTIONS_PER_POOL 16/64/128/256 x GATEWAY_THREADS 1/2/4/8.
#   SWEEP_BASE      settings every gateway gets (default: MAX_TOTAL_CONNECTIONS=280
#                   MAX_CONNECTIONS_PER_PLATFORM=280, room for 256 clients under the cluster's 300)
#   SWEEP_CLIENTS   concurrencies (default "64 256")
#   SWEEP_ROUNDS    rounds (default 1)
#   SWEEP_DURATION  measured seconds per run (default 5); SWEEP_WARMUP unmeasured seconds before (2)
#   SWEEP_THREADS   load generator threads (default 2)
#   GW_BIN          the gateway binary (default target/bench-release/stonescriptdb-gateway, built here)
#   LOADGEN         a built bench/loadgen.rs (default: built here with `cargo bench --no-run`)
#   SWEEP_OUT       also write the summary to this file
#   SWEEP_KEEP      1: keep the work directory (every run's gateway log is in logs/)
# Each run starts its own gateway and stops it afterwards (the cluster allows 300 connections).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "${ROOT}/bench/lib.sh"

log() { printf '[sweep.sh] %s\n' "$*" >&2; }
die() { printf '[sweep.sh] ERROR: %s\n' "$*" >&2; exit 1; }

DEFAULT_CFGS=""
for pool in 16 64 128 256; do
    for t in 1 2 4 8; do
        DEFAULT_CFGS+="MAX_CONNECTIONS_PER_POOL=${pool},GATEWAY_THREADS=${t} "
    done
done
CFGS="${CFGS:-${DEFAULT_CFGS}}"
BASE="${SWEEP_BASE:-MAX_TOTAL_CONNECTIONS=280 MAX_CONNECTIONS_PER_PLATFORM=280}"
CLIENTS="${SWEEP_CLIENTS:-64 256}"
ROUNDS="${SWEEP_ROUNDS:-1}"
D="${SWEEP_DURATION:-5}"
W="${SWEEP_WARMUP:-2}"
LT="${SWEEP_THREADS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ROOT}/target}"

WORK=""
GW_PID=""
# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local status=$?
    trap '' INT TERM
    if [[ -n "${GW_PID}" ]]; then
        kill -TERM "${GW_PID}" 2>/dev/null || true
        wait "${GW_PID}" 2>/dev/null || true
    fi
    bench_pg_stop
    if [[ -n "${WORK}" && "${SWEEP_KEEP:-0}" != 1 ]]; then rm -rf -- "${WORK}"; fi
    [[ "${SWEEP_KEEP:-0}" == 1 ]] && log "work directory kept: ${WORK}"
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "${GW_BIN:-}" ]]; then
    log "building the gateway (bench-release)"
    (cd "${ROOT}" && cargo build --profile bench-release >&2) || die "build failed"
    GW_BIN="${CARGO_TARGET_DIR}/bench-release/stonescriptdb-gateway"
fi
GW_BIN="$(realpath "${GW_BIN}")"
bench_loadgen

WORK="$(mktemp -d /tmp/ssdb-sweep.XXXXXX)"
chmod 0755 "${WORK}"
bench_pg_start sweep

# start_gw BIN WORDS...: a gateway on a free port, PORT (a copy under its own name: see bench/lib.sh).
start_gw() {
    local bin="$1"
    shift
    cp "${bin}" "${WORK}/ssdb-sweep-gw"
    # shellcheck disable=SC2086  # BASE is a list of KEY=VALUE words
    bench_gateway_start "${WORK}/ssdb-sweep-gw" "${WORK}/gw.log" ALLOWED_ADMIN_IPS=127.0.0.1/32 ${BASE} "$@"
    GW_PID="${BENCH_GW_PID}"
    PORT="${BENCH_GW_PORT}"
    bench_gateway_wait "gateway ($*)"
}
RUN=0
stop_gw() {
    kill -TERM "${GW_PID}" 2>/dev/null || true
    wait "${GW_PID}" 2>/dev/null || true
    GW_PID=""
    RUN=$((RUN + 1))
    mkdir -p "${WORK}/logs" && cp "${WORK}/gw.log" "${WORK}/logs/run-${RUN}.log"
}
# counters: "connects closes room_request room_close slot_handover call_forwarded 0 connect_failures"
counters() {
    curl -fsS "http://127.0.0.1:${PORT}/metrics" 2>/dev/null | awk '
        /^stonescriptdb_gateway_backend_connects_total / { c = $2 }
        /^stonescriptdb_gateway_backend_closes_total / { x = $2 }
        /^stonescriptdb_gateway_loop_traffic_total\{kind="room_request"\}/ { a = $2 }
        /^stonescriptdb_gateway_loop_traffic_total\{kind="room_close"\}/ { b = $2 }
        /^stonescriptdb_gateway_loop_traffic_total\{kind="slot_handover"\}/ { h = $2 }
        /^stonescriptdb_gateway_loop_traffic_total\{kind="call_forwarded"\}/ { f = $2 }
        /^stonescriptdb_gateway_backend_connect_failures_total / { e = $2 }
        END { printf "%d %d %d %d %d %d %d %d\n", c, x, a, b, h, f, l, e }'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_gw "${GW_BIN}"
GATEWAY_URL="http://127.0.0.1:${PORT}" PSQL="${PSQL}" bash "${ROOT}/bench/setup.sh"
stop_gw
HZ="$(getconf CLK_TCK)"

RESULTS="${WORK}/results"
: >"${RESULTS}"
read -r -a WORDS <<<"${CFGS}"
n="${#WORDS[@]}"
for round in $(seq "${ROUNDS}"); do
    for C in ${CLIENTS}; do
        for k in $(seq 0 $((n - 1))); do
            if ((round % 2)); then i="${k}"; else i=$((n - 1 - k)); fi
            cfg="${WORDS[i]}"
            bin="${GW_BIN}"
            settings=()
            for s in ${cfg//,/ }; do
                if [[ "${s}" == BIN=* ]]; then bin="$(realpath "${s#BIN=}")"; else settings+=("${s}"); fi
            done
            start_gw "${bin}" "${settings[@]}"
            m0="$(counters)"
            # After the warmup and just before the end of the load (clients leaving cancel their calls,
            # which may close connections): what moves between the two is the steady state.
            (sleep "${W}"; counters >"${WORK}/mid"; sleep "$(awk -v d="${D}" 'BEGIN { print d - 1 }')"
                counters >"${WORK}/late") &
            mid_pid=$!
            t0="$(cpu_ticks "${GW_PID}")"
            out="$("${LOADGEN}" --addr "127.0.0.1:${PORT}" --connections "${C}" --threads "${LT}" --duration "${D}" \
                --warmup "${W}" --function bench_get_item --params '[{rand}]' --rand 1:10000 --quiet)" \
                || { log "loadgen failed against ${cfg}: ${out}"; out="RESULT rps=0 p50_us=0 p99_us=0 requests=0"; }
            t1="$(cpu_ticks "${GW_PID}")"
            wait "${mid_pid}" 2>/dev/null || true
            m2="$(counters)"
            m1="$(cat "${WORK}/mid") $(cat "${WORK}/late")"
            stop_gw
            rps="$(sed -n 's/.* rps=\([^ ]*\).*/\1/p' <<<"${out}")"
            p50="$(sed -n 's/.* p50_us=\([^ ]*\).*/\1/p' <<<"${out}")"
            p99="$(sed -n 's/.* p99_us=\([^ ]*\).*/\1/p' <<<"${out}")"
            errors="$(sed -n 's/.* errors=\([^ ]*\).*/\1/p' <<<"${out}")"
            # CPU over warmup + measured time, per call at the measured rate (as compare.sh counts it).
            us="$(awk -v t="$((t1 - t0))" -v hz="${HZ}" -v r="${rps:-0}" -v d="$((D + W))" \
                'BEGIN { if (r > 0) printf "%.1f", t / hz * 1e6 / (r * d); else print "-" }')"
            printf '%s %s %s %s %s %s %s %s | %s | %s | %s\n' "${round}" "${C}" "${cfg}" "${rps:-0}" "${p50:-0}" \
                "${p99:-0}" "${us}" "${errors:-?}" "${m0}" "${m1}" "${m2}" >>"${RESULTS}"
            log "round ${round} c${C} ${cfg}: ${rps} req/s p99 ${p99} us, ${us} us CPU/call"
        done
    done
done

summary() {
    printf '== /call settings sweep (bench/sweep.sh) ==\n'
    printf 'date:     %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    printf 'machine:  %s cores, %s; load average at the end: %s\n' "$(nproc)" \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'gateway:  %s (sha256 %s); every gateway: %s\n' "${GW_BIN}" "$(sha256sum "${GW_BIN}" | cut -c1-12)" "${BASE}"
    printf 'load:     bench_get_item, %ss measured + %ss warmup per run, %s loadgen threads, %s rounds\n' \
        "${D}" "${W}" "${LT}" "${ROUNDS}"
    printf 'columns:  connects/closes and loop traffic (room requests, room closes, slot hand-overs, forwarded calls)\n'
    printf '          counted over the whole run, "steady" = from the end of the warmup to 1 s before the end of the load\n\n'
    awk -F' [|] ' '
        {
            split($1, a, " "); split($2, m0, " "); split($3, m1, " "); for (j = 1; j <= 8; j++) ml[j] = m1[j + 8]; split($4, m2, " ");
            key = a[2] " " a[3]; rps[key] += a[4]; p99[key] += a[6]; us[key] += a[7]; n[key]++;
            if (!(key in seen)) { seen[key] = 1; order[++k] = key; c[key] = a[2] }
            if (a[4] > best[a[2]]) best[a[2]] = a[4];
            for (j = 1; j <= 8; j++) { all[key, j] += m2[j] - m0[j]; st[key, j] += ml[j] - m1[j] }
        }
        END {
            printf "%-5s %-48s %9s %9s %7s %6s %15s %15s %30s\n", "C", "settings", "req/s", "p99 us", "us/call",
                "/best", "conn/close/fail", "steady", "room req/close/handover/fwd";
            for (i = 1; i <= k; i++) {
                key = order[i]; m = n[key]; split(key, kk, " ");
                best_c = 0; for (j = 1; j <= k; j++) if (c[order[j]] == c[key] && rps[order[j]] / n[order[j]] > best_c) best_c = rps[order[j]] / n[order[j]];
                printf "%-5s %-48s %9.0f %9.0f %7.1f %6.2f %5d/%d/%-5d %7d/%-7d %6d/%d/%d/%d\n", c[key], kk[2],
                    rps[key] / m, p99[key] / m, us[key] / m, rps[key] / m / best_c, all[key, 1] / m, all[key, 2] / m, all[key, 8] / m,
                    st[key, 1] / m, st[key, 2] / m, all[key, 3] / m, all[key, 4] / m, all[key, 5] / m, all[key, 6] / m;
            }
        }' "${RESULTS}"
    printf '\nraw (round C settings rps p50 p99 us/call errors | counters at start | after warmup, 1 s before the end | at end):\n'
    cat "${RESULTS}"
}
summary | tee "${SWEEP_OUT:-/dev/null}"
