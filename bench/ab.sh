#!/usr/bin/env bash
# A/B of gateway builds on /call: the same throwaway PostgreSQL, the same database, the load generator
# against each build in turn, several rounds, the order flipped every round so that neither build
# always runs right after the other. Ratios are against the first build (the baseline).
#
#   bash bench/ab.sh NAME=BINARY[+KEY=VALUE...] NAME=BINARY[+KEY=VALUE...] [...]
#
# A build may carry settings of its own after `+`, so one binary can be compared with itself under
# two settings in the same run, e.g. the per-function figures on and off:
#   bash bench/ab.sh on=target/bench-release/stonescriptdb-gateway \
#       off=target/bench-release/stonescriptdb-gateway+METRICS_TRACKED_NAMES=0
#
# e.g. keep a build of main as the baseline, then compare the working tree against it:
#   cargo build --profile bench-release && cp target/bench-release/stonescriptdb-gateway /tmp/gw-main
#   (make the change) cargo build --profile bench-release
#   bash bench/ab.sh main=/tmp/gw-main new=target/bench-release/stonescriptdb-gateway
#
# Environment (all optional):
#   AB_ROUNDS     rounds (each runs every build once)               (default 6)
#   AB_DURATION   measured seconds per run                          (default 6)
#   AB_WARMUP     unmeasured seconds before each run                (default 1)
#   AB_CONNS      keep-alive connections of the load generator     (default 16)
#   AB_FUNCTION   bench_get_item (1 row) or bench_list_items        (default bench_get_item)
#   AB_OUT        also write the summary to this file
#   LOADGEN       a built bench/loadgen.rs (default: built here with `cargo bench --no-run`)
#   GATEWAY_EXTRA_ENV  KEY=VALUE words for every gateway
# Each build runs as its own gateway (default event loops, LOG_LEVEL=warn, PostgreSQL over its Unix
# socket); the ones not being measured sit idle. Everything started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "${ROOT}/bench/lib.sh"

log() { printf '[ab.sh] %s\n' "$*" >&2; }
die() { printf '[ab.sh] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 2 ]] || die "usage: bash bench/ab.sh NAME=BINARY NAME=BINARY [...] (the first is the baseline)"
ROUNDS="${AB_ROUNDS:-6}"
D="${AB_DURATION:-6}"
W="${AB_WARMUP:-1}"
C="${AB_CONNS:-16}"
FN="${AB_FUNCTION:-bench_get_item}"
RAND=1:10000
[[ "${FN}" == bench_list_items ]] && RAND=1:9001
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ROOT}/target}"

NAMES=()
BINS=()
ENVS=()
for arg in "$@"; do
    [[ "${arg}" == *=* ]] || die "not NAME=BINARY: ${arg}"
    NAMES+=("${arg%%=*}")
    rest="${arg#*=}"
    bin="${rest%%+*}"
    # The settings after the binary, `+` between them, become KEY=VALUE words for that gateway only.
    settings=""
    [[ "${rest}" == *+* ]] && settings="${rest#*+}"
    ENVS+=("${settings//+/ }")
    BINS+=("$(realpath "${bin}")")
    [[ -x "${BINS[-1]}" ]] || die "not an executable: ${bin}"
done

WORK=""
PIDS=()
# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local status=$?
    trap '' INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "${pid}" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "${pid}" 2>/dev/null || true
    done
    bench_pg_stop
    [[ -n "${WORK}" ]] && rm -rf -- "${WORK}"
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d /tmp/ssdb-ab.XXXXXX)"
chmod 0755 "${WORK}"

bench_pg_start ab
PG_VERSION="$("${PSQL}" -X -At -h "${DB_HOST}" -p "${DB_PORT}" -U "${DB_USER}" -d postgres -c 'SHOW server_version')"

bench_loadgen

PORTS=()
for i in "${!NAMES[@]}"; do
    # A copy under its own name (why: bench/lib.sh).
    bin="${WORK}/ssdb-ab-${NAMES[i]}"
    cp "${BINS[i]}" "${bin}"
    # shellcheck disable=SC2086  # GATEWAY_EXTRA_ENV and ENVS hold lists of KEY=VALUE words
    bench_gateway_start "${bin}" "${WORK}/${NAMES[i]}.log" ${GATEWAY_EXTRA_ENV:-} ${ENVS[i]}
    PIDS+=("${BENCH_GW_PID}")
    PORTS+=("${BENCH_GW_PORT}")
    bench_gateway_wait "gateway ${NAMES[i]}"
    if [[ "${i}" == 0 ]]; then
        GATEWAY_URL="http://127.0.0.1:${PORTS[i]}" PSQL="${PSQL}" bash "${ROOT}/bench/setup.sh"
    fi
done

RESULTS="${WORK}/results"
: >"${RESULTS}"
n="${#NAMES[@]}"
for round in $(seq "${ROUNDS}"); do
    for k in $(seq 0 $((n - 1))); do
        # Odd rounds run the builds in order, even rounds in reverse.
        if ((round % 2)); then i="${k}"; else i=$((n - 1 - k)); fi
        kill -0 "${PIDS[i]}" 2>/dev/null || die "gateway ${NAMES[i]} exited"
        out="$("${LOADGEN}" --addr "127.0.0.1:${PORTS[i]}" --connections "${C}" --threads 2 --duration "${D}" \
            --warmup "${W}" --function "${FN}" --params '[{rand}]' --rand "${RAND}" --quiet)" \
            || die "loadgen failed or saw errors against ${NAMES[i]}: ${out}"
        rps="$(sed -n 's/.* rps=\([^ ]*\).*/\1/p' <<<"${out}")"
        p50="$(sed -n 's/.* p50_us=\([^ ]*\).*/\1/p' <<<"${out}")"
        p99="$(sed -n 's/.* p99_us=\([^ ]*\).*/\1/p' <<<"${out}")"
        printf '%s %s %s %s %s\n' "${round}" "${NAMES[i]}" "${rps}" "${p50}" "${p99}" >>"${RESULTS}"
        log "round ${round} ${NAMES[i]}: ${rps} req/s p50 ${p50} us p99 ${p99} us"
    done
done

summary() {
    printf '== A/B of gateway builds on /call (bench/ab.sh) ==\n'
    printf 'date:     %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    printf 'machine:  %s cores, %s; load average before: %s\n' "$(nproc)" \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'versions: %s; PostgreSQL %s\n' "$(rustc --version)" "${PG_VERSION}"
    printf 'load:     %s, %s connections on 2 threads, %ss measured + %ss warmup per run, %s rounds %s\n' \
        "${FN}" "${C}" "${D}" "${W}" "${ROUNDS}" "${GATEWAY_EXTRA_ENV:-}"
    for i in "${!NAMES[@]}"; do
        printf 'build %-12s %s (sha256 %s) %s\n' "${NAMES[i]}" "${BINS[i]}" "$(sha256sum "${BINS[i]}" | cut -c1-12)" \
            "${ENVS[i]}"
    done
    printf '\n'
    awk -v base="${NAMES[0]}" -v names="${NAMES[*]}" '
        { rps[$1, $2] = $3; p50[$1, $2] = $4; p99[$1, $2] = $5; if ($1 > rounds) rounds = $1 }
        END {
            k = split(names, nm, " ");
            printf "%-6s", "round";
            for (j = 1; j <= k; j++) printf " %12s", nm[j] " req/s";
            for (j = 2; j <= k; j++) printf " %12s", nm[j] "/" base;
            printf "\n";
            for (r = 1; r <= rounds; r++) {
                printf "%-6s", r;
                for (j = 1; j <= k; j++) { printf " %12.0f", rps[r, nm[j]]; sum[j] += rps[r, nm[j]]; s50[j] += p50[r, nm[j]]; s99[j] += p99[r, nm[j]] }
                for (j = 2; j <= k; j++) {
                    x = rps[r, nm[j]] / rps[r, base]; printf " %12.3f", x; lr[j] += log(x);
                    if (r == 1 || x < lo[j]) lo[j] = x; if (r == 1 || x > hi[j]) hi[j] = x
                }
                printf "\n";
            }
            printf "\n";
            for (j = 1; j <= k; j++)
                printf "%-12s mean %8.0f req/s, mean p50 %7.1f us, mean p99 %8.1f us\n", nm[j], sum[j] / rounds,
                    s50[j] / rounds, s99[j] / rounds;
            for (j = 2; j <= k; j++)
                printf "%s/%s throughput: geometric mean of the per-round ratios %.3f (range %.3f-%.3f)\n",
                    nm[j], base, exp(lr[j] / rounds), lo[j], hi[j];
        }' "${RESULTS}"
}
summary | tee "${AB_OUT:-/dev/null}"
