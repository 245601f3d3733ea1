#!/usr/bin/env bash
# Gateway vs direct PostgreSQL (pgbench -M prepared), same database, same concurrency, same run.
#
#   bash bench/compare.sh
#
# Environment (all optional):
#   DB_HOST, DB_PORT  use this PostgreSQL (socket dir or host) instead of a throwaway cluster;
#                     DB_USER (default postgres) and DB_PASSWORD as for the gateway.
#                     The role must be able to DROP/CREATE DATABASE bench_main.
#   BENCH_DURATION    seconds per measured run                 (default 10)
#   BENCH_WARMUP      unmeasured seconds before each run       (default 2)
#   BENCH_REPEAT      repetitions of the lookup at each level  (default 1)
#   BENCH_LEVELS      concurrency levels of the lookup          (default "16 64 256")
#   BENCH_CONNS       the level of the list run                 (default 16)
#   BENCH_POOL        MAX_CONNECTIONS_PER_POOL of the gateways (default: the gateway's own default)
#   BENCH_THREADS     GATEWAY_THREADS of the main gateway       (default: the gateway's default, one per core)
#   BENCH_CLIENT_THREADS  threads of pgbench (-j) and of the load generator (default: max(2, cores / 4))
#   BENCH_ONE_LOOP    0: skip the second gateway with GATEWAY_THREADS=1 (default 1: run it)
#   BENCH_PERF        1: record `perf record -g` of the gateway during one extra C-connection lookup run,
#                     then count its syscalls/context switches per request (perf stat) during two more
#                     (C and 1 connection); needs perf; reports land in the (kept) work directory
#   BENCH_KEEP_WORK   1: keep the work directory (logs, pgbench logs, perf data)
#   GATEWAY_EXTRA_ENV extra KEY=VALUE words put in the gateway's environment (e.g. CALL_RESET_SESSION=false)
#   BENCH_LOADGEN_THREADS  per-connection: the load generator's older mode, a blocking thread per connection
#   LOADGEN           a built bench/loadgen.rs (default: built here with `cargo bench --no-run`)
#
# Two gateways run side by side on the same PostgreSQL: the main one (one event loop per core unless
# BENCH_THREADS says otherwise) and one with a single loop; the idle one costs no CPU.
# What runs (in this order, each pgbench run immediately followed by the matching gateway runs):
#   lookup  bench_get_item(random 1..10000)    C in BENCH_LEVELS, BENCH_REPEAT times: pgbench, main, 1 loop
#   lookup  bench_get_item(random 1..10000)    C=1
#   list    bench_list_items(random 1..9001)   C=BENCH_CONNS   (1,000 rows per call)
# pgbench: -M prepared -n -c C -j min(C,BENCH_CLIENT_THREADS) -T D --log (per-transaction latencies -> p50/p99);
# gateway: bench/loadgen.rs, one request in flight per keep-alive connection, the connections spread over
#          the same number of threads as pgbench's -j (BENCH_LOADGEN_THREADS=per-connection: one thread each).
# Everything started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "${ROOT}/bench/lib.sh"

log() { printf '[compare.sh] %s\n' "$*" >&2; }
die() { printf '[compare.sh] ERROR: %s\n' "$*" >&2; exit 1; }

D="${BENCH_DURATION:-10}"
W="${BENCH_WARMUP:-2}"
REPEAT="${BENCH_REPEAT:-1}"
LEVELS="${BENCH_LEVELS:-16 64 256}"
C="${BENCH_CONNS:-16}"
POOL="${BENCH_POOL:-}"
THREADS="${BENCH_THREADS:-}"
CLIENT_THREADS="${BENCH_CLIENT_THREADS:-$(($(nproc) / 4 > 2 ? $(nproc) / 4 : 2))}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ROOT}/target}"

# --- cleanup -----------------------------------------------------------------------

GW_PIDS=()
GW_PID=""
GW1_PID=""
SAMPLER_PID=""
WORK=""
# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local status=$?
    trap '' INT TERM
    if [[ -n "${SAMPLER_PID}" ]]; then
        kill "${SAMPLER_PID}" 2>/dev/null || true
        wait "${SAMPLER_PID}" 2>/dev/null || true
    fi
    for pid in "${GW_PIDS[@]}"; do
        kill -TERM "${pid}" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "${pid}" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "${pid}" 2>/dev/null || true
        wait "${pid}" 2>/dev/null || true
    done
    bench_pg_stop
    if [[ -n "${WORK}" ]]; then
        if [[ "${BENCH_KEEP_WORK:-0}" == 1 || "${BENCH_PERF:-0}" == 1 ]]; then
            log "work directory kept: ${WORK}"
        else
            rm -rf -- "${WORK}"
        fi
    fi
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d /tmp/ssdb-bench.XXXXXX)"
chmod 0755 "${WORK}"

# --- PostgreSQL ----------------------------------------------------------------------

bench_pg_given_or_start bench
if [[ -n "${DB_PASSWORD:-}" ]]; then
    export PGPASSWORD="${DB_PASSWORD}"
fi
PGBENCH=pgbench
if [[ -n "${PG_BINDIR}" && -x "${PG_BINDIR}/pgbench" ]]; then
    PGBENCH="${PG_BINDIR}/pgbench"
fi
command -v "${PGBENCH}" >/dev/null || die "pgbench not found (apt-get install postgresql-contrib / postgresql-client)"

PG_VERSION="$("${PSQL}" -X -At -h "${DB_HOST}" -p "${DB_PORT}" -U "${DB_USER}" -d postgres -c 'SHOW server_version')"

# --- build ---------------------------------------------------------------------------

log "building the gateway (cargo build --profile bench-release)"
(cd "${ROOT}" && cargo build --profile bench-release --quiet)
GW_BIN="${CARGO_TARGET_DIR}/bench-release/stonescriptdb-gateway"
[[ -x "${GW_BIN}" ]] || die "no gateway binary at ${GW_BIN}"
bench_loadgen

# --- gateway -------------------------------------------------------------------------

# Run a copy under its own name (why: bench/lib.sh).
cp "${GW_BIN}" "${WORK}/ssdb-bench-gw"
GW_BIN="${WORK}/ssdb-bench-gw"
# start_gateway LOG_NAME EXTRA_WORDS...: starts a gateway on a free port (BENCH_GW_PID, BENCH_GW_PORT)
# and waits until it answers.
start_gateway() {
    local name="$1"
    shift
    local -a words=()
    [[ -n "${POOL}" ]] && words+=(MAX_CONNECTIONS_PER_POOL="${POOL}")
    # shellcheck disable=SC2086  # GATEWAY_EXTRA_ENV is a list of KEY=VALUE words
    bench_gateway_start "${GW_BIN}" "${WORK}/${name}.log" "${words[@]}" ${GATEWAY_EXTRA_ENV:-} "$@"
    GW_PIDS+=("${BENCH_GW_PID}")
    bench_gateway_wait "the gateway (${name})"
}
main_env=()
[[ -n "${THREADS}" ]] && main_env+=(GATEWAY_THREADS="${THREADS}")
log "starting the main gateway (${THREADS:-one loop per core}, pool ${POOL:-default}, ${GATEWAY_EXTRA_ENV:-no extra env})"
start_gateway gateway "${main_env[@]}"
GW_PID="${BENCH_GW_PID}" GW_PORT="${BENCH_GW_PORT}"
GATEWAY_URL="http://127.0.0.1:${GW_PORT}" PSQL="${PSQL}" bash "${ROOT}/bench/setup.sh"
GW_LOOPS="$(curl -fsS "http://127.0.0.1:${GW_PORT}/health" | sed -n 's/.*"event_loops":\([0-9]*\).*/\1/p')"
if [[ "${BENCH_ONE_LOOP:-1}" == 1 ]]; then
    log "starting the single-loop gateway"
    start_gateway gateway-1loop GATEWAY_THREADS=1
    GW1_PID="${BENCH_GW_PID}" GW1_PORT="${BENCH_GW_PORT}"
fi
# The loadgen runs use these; switched to the single-loop gateway for its runs.
MAIN_PID="${GW_PID}"
MAIN_PORT="${GW_PORT}"
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/${GW_PID}/status"; }
RSS_IDLE="$(rss_kb)"
use_gateway() {
    if [[ "$1" == main ]]; then
        GW_PID="${MAIN_PID}" GW_PORT="${MAIN_PORT}"
    else
        GW_PID="${GW1_PID}" GW_PORT="${GW1_PORT}"
    fi
}
CLK_TCK="$(getconf CLK_TCK)"
# utime+stime of the gateway in clock ticks.
gw_ticks() { awk '{print $14 + $15}' "/proc/${GW_PID}/stat"; }
# Busy clock ticks of the whole machine (user nice system irq softirq steal).
sys_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# --- runners -------------------------------------------------------------------------

# Results: one line per run in ${WORK}/results: "kind label conns rps p50_us p99_us mean_us extra..."
RESULTS="${WORK}/results"
: >"${RESULTS}"

# Dies with the gateway's exit status and log if it is gone.
gw_alive() {
    local status=0
    if ! kill -0 "${GW_PID}" 2>/dev/null; then
        wait "${GW_PID}" || status=$?
        GW_PID=""
        log "gateway log (${WORK}/gateway.log):"
        tail -n 40 "${WORK}/gateway.log" >&2 || true
        die "the gateway exited (status ${status}, $([[ ${status} -gt 128 ]] && kill -l $((status - 128)) 2>/dev/null)) before/while: $1"
    fi
}

# pgbench_run LABEL SCRIPT CONNS
pgbench_run() {
    local label="$1" script="$2" conns="$3" jobs out dir lat tps p50 p99 mean n
    jobs=$((conns < CLIENT_THREADS ? conns : CLIENT_THREADS))
    dir="${WORK}/pgbench-${label}"
    mkdir -p "${dir}"
    local -a base=("${PGBENCH}" -h "${DB_HOST}" -p "${DB_PORT}" -U "${DB_USER}" -M prepared -n
        -c "${conns}" -j "${jobs}" -f "${ROOT}/bench/${script}")
    gw_alive "pgbench ${label}"
    if [[ "${W}" != 0 ]]; then
        "${base[@]}" -T "${W}" bench_main >/dev/null 2>&1 || true
    fi
    local TIMEFORMAT='%U %S' s0 s1 cli_us sys_us
    s0="$(sys_busy)"
    { time (cd "${dir}" && "${base[@]}" -T "${D}" --log --log-prefix=tx bench_main >"${dir}/stdout" 2>&1); } \
        2>"${dir}/time" || { cat "${dir}/stdout" >&2; die "pgbench failed (${label})"; }
    s1="$(sys_busy)"
    out="$(cat "${dir}/stdout")"
    tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"${out}" | head -n 1)"
    if grep -q '^number of failed transactions' <<<"${out}" \
        && ! grep -q '^number of failed transactions: 0 ' <<<"${out}"; then
        printf '%s\n' "${out}" >&2
        die "pgbench saw failed transactions (${label})"
    fi
    # Per-transaction log: client tx_no latency_us script epoch epoch_us.
    lat="${dir}/lat"
    cat "${dir}"/tx.* | awk '{print $3}' | sort -n >"${lat}"
    n="$(wc -l <"${lat}")"
    p50="$(awk -v n="${n}" 'NR == int((n * 50 + 99) / 100) {print; exit}' "${lat}")"
    p99="$(awk -v n="${n}" 'NR == int((n * 99 + 99) / 100) {print; exit}' "${lat}")"
    mean="$(awk '{s += $1} END {if (NR) printf "%.1f", s / NR}' "${lat}")"
    rm -f "${dir}"/tx.* "${lat}"
    # CPU per transaction: pgbench's own user+sys, and the whole machine's busy time (/proc/stat).
    cli_us="$(awk -v n="${n}" '{if (n > 0) printf "%.1f", ($1 + $2) * 1e6 / n; else print "-"}' "${dir}/time")"
    sys_us="$(awk -v t="$((s1 - s0))" -v hz="${CLK_TCK}" -v n="${n}" 'BEGIN {if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-"}')"
    printf 'pgbench %s %s %s %s %s %s - - - %s %s\n' "${label}" "${conns}" "${tps}" "${p50}" "${p99}" "${mean}" \
        "${cli_us}" "${sys_us}" >>"${RESULTS}"
    log "pgbench ${label}: c=${conns} tps=${tps} p50=${p50}us p99=${p99}us mean=${mean}us cpu/tx: pgbench ${cli_us}us machine ${sys_us}us"
}

# loadgen_run LABEL FUNCTION RAND CONNS
loadgen_run() {
    local label="$1" fn="$2" rand="$3" conns="$4" out line rss t0 t1 cpu_us
    gw_alive "loadgen ${label}"
    : >"${WORK}/rss-max"
    (
        max=0
        while kill -0 "${GW_PID}" 2>/dev/null; do
            v="$(awk '/^VmRSS:/ {print $2}' "/proc/${GW_PID}/status" 2>/dev/null || echo 0)"
            if [[ -n "${v}" && "${v}" -gt "${max}" ]]; then
                max="${v}"
                printf '%s\n' "${max}" >"${WORK}/rss-max"
            fi
            sleep 0.2
        done
    ) &
    SAMPLER_PID=$!
    local TIMEFORMAT='%U %S' s0 s1 cli_us sys_us secs n
    t0="$(gw_ticks)"
    s0="$(sys_busy)"
    # The same thread count as pgbench's -j: both clients multiplex their connections.
    local threads=$((conns < CLIENT_THREADS ? conns : CLIENT_THREADS))
    [[ "${BENCH_LOADGEN_THREADS:-}" == "per-connection" ]] && threads=0
    { time "${LOADGEN}" --addr "127.0.0.1:${GW_PORT}" --connections "${conns}" --threads "${threads}" --duration "${D}" \
        --warmup "${W}" --function "${fn}" --params '[{rand}]' --rand "${rand}" >"${WORK}/loadgen-${label}.out" 2>&1; } \
        2>"${WORK}/loadgen-${label}.time" || {
        cat "${WORK}/loadgen-${label}.out" >&2
        die "loadgen failed or saw errors (${label})"
    }
    s1="$(sys_busy)"
    gw_alive "loadgen ${label}"
    t1="$(gw_ticks)"
    out="$(cat "${WORK}/loadgen-${label}.out")"
    kill "${SAMPLER_PID}" 2>/dev/null || true
    wait "${SAMPLER_PID}" 2>/dev/null || true
    SAMPLER_PID=""
    line="$(grep '^RESULT ' <<<"${out}")"
    rss="$(cat "${WORK}/rss-max")"
    get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"${line}"; }
    # CPU per request over warmup + measured time: the counters include the warmup requests, so divide
    # by the measured rate times the whole wall time (an estimate; warmup runs at the same rate).
    secs="$(awk -v d="${D}" -v w="${W}" 'BEGIN {print d + w}')"
    n="$(awk -v r="$(get rps)" -v s="${secs}" 'BEGIN {printf "%.0f", r * s}')"
    cpu_us="$(awk -v t="$((t1 - t0))" -v hz="${CLK_TCK}" -v n="${n}" 'BEGIN {if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-"}')"
    cli_us="$(awk -v n="${n}" '{if (n > 0) printf "%.1f", ($1 + $2) * 1e6 / n; else print "-"}' "${WORK}/loadgen-${label}.time")"
    sys_us="$(awk -v t="$((s1 - s0))" -v hz="${CLK_TCK}" -v n="${n}" 'BEGIN {if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-"}')"
    printf 'gateway %s %s %s %s %s %s %s %s %s %s %s\n' "${label}" "${conns}" "$(get rps)" "$(get p50_us)" \
        "$(get p99_us)" "$(get mean_us)" "${rss}" "$(get errors)" "${cpu_us}" "${cli_us}" "${sys_us}" >>"${RESULTS}"
    log "gateway ${label}: c=${conns} rps=$(get rps) p50=$(get p50_us)us p99=$(get p99_us)us errors=$(get errors) rss_max=${rss}kB cpu/req: gateway ${cpu_us}us loadgen ${cli_us}us machine ${sys_us}us"
}

# --- the runs ------------------------------------------------------------------------

for level in ${LEVELS}; do
    for i in $(seq "${REPEAT}"); do
        pgbench_run "lookup-c${level}-r${i}" pgbench-lookup.sql "${level}"
        use_gateway main
        loadgen_run "lookup-c${level}-r${i}" bench_get_item 1:10000 "${level}"
        if [[ -n "${GW1_PID}" ]]; then
            use_gateway one
            loadgen_run "lookup-c${level}-r${i}@1loop" bench_get_item 1:10000 "${level}"
        fi
    done
done
use_gateway main
pgbench_run lookup-c1 pgbench-lookup.sql 1
loadgen_run lookup-c1 bench_get_item 1:10000 1
pgbench_run "list-c${C}" pgbench-list.sql "${C}"
loadgen_run "list-c${C}" bench_list_items 1:9001 "${C}"

if [[ "${BENCH_PERF:-0}" == 1 ]]; then
    command -v perf >/dev/null || die "BENCH_PERF=1 but perf is not installed"
    log "perf: recording the gateway during a ${D}s ${C}-connection lookup run"
    perf record -g -F 999 -o "${WORK}/perf.data" -p "${GW_PID}" -- sleep "$((D + W))" \
        >"${WORK}/perf-record.log" 2>&1 &
    perf_pid=$!
    loadgen_run "perf-lookup-c${C}" bench_get_item 1:10000 "${C}"
    wait "${perf_pid}" || log "perf record exited with $? (see ${WORK}/perf-record.log)"
    perf report -i "${WORK}/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
        | grep -v '^$' | head -n 400 >"${WORK}/perf-report.txt" || true
    perf report -i "${WORK}/perf.data" --no-children --sort dso --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -n 20 >"${WORK}/perf-dso.txt" || true
    log "perf report: ${WORK}/perf-report.txt (by dso: ${WORK}/perf-dso.txt)"
    # Syscalls and context switches of the gateway per request, at C and at 1 connection.
    ev=raw_syscalls:sys_enter,context-switches
    for sc in sendto recvfrom epoll_wait epoll_ctl writev read write; do
        ev="${ev},syscalls:sys_enter_${sc}"
    done
    for conns in "${C}" 1; do
        perf stat -x, -e "${ev}" -o "${WORK}/perf-stat-c${conns}.csv" -p "${GW_PID}" -- sleep "$((D + W))" \
            >/dev/null 2>&1 &
        perf_pid=$!
        loadgen_run "stat-lookup-c${conns}" bench_get_item 1:10000 "${conns}"
        wait "${perf_pid}" || true
        n="$(awk -v r="$(awk -v k="stat-lookup-c${conns}" '$1 == "gateway" && $2 == k {print $4}' "${RESULTS}")" \
            -v s="$((D + W))" 'BEGIN {printf "%.0f", r * s}')"
        {
            printf 'gateway events per request, %s connection(s), ~%s requests:\n' "${conns}" "${n}"
            awk -F, -v n="${n}" '/^[0-9]/ {printf "  %-36s %8.2f\n", $3, $1 / n}' "${WORK}/perf-stat-c${conns}.csv"
        } | tee -a "${WORK}/perf-syscalls.txt" >&2
    done
fi

# --- summary -------------------------------------------------------------------------

summary() {
    printf '\n== StoneScriptDB Gateway vs direct pgbench (same run) ==\n'
    printf 'date:     %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    printf 'machine:  %s cores, %s, %s RAM\n' "$(nproc)" \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
        "$(free -h | awk '/^Mem:/ {print $2}')"
    printf 'versions: %s; PostgreSQL %s; pgbench %s\n' "$(rustc --version)" "${PG_VERSION}" \
        "$("${PGBENCH}" --version | sed 's/^pgbench (PostgreSQL) \([^ ]*\).*/\1/')"
    printf 'settings: duration %ss, warmup %ss, gateway pool %s, main gateway %s event loops, LOG_LEVEL=warn %s\n' \
        "${D}" "${W}" "${POOL:-default}" "${GW_LOOPS}" "${GATEWAY_EXTRA_ENV:-}"
    printf 'gateway RSS idle after start: %s kB\n\n' "${RSS_IDLE}"
    awk -v c="${C}" '
        $1 == "pgbench" { pg_rps[$2] = $4; pg_p50[$2] = $5; pg_p99[$2] = $6; pg_mean[$2] = $7; order[++n] = $2 }
        $1 == "pgbench" { pg_cli[$2] = $11; pg_sys[$2] = $12 }
        $1 == "gateway" { gw_rps[$2] = $4; gw_p50[$2] = $5; gw_p99[$2] = $6; gw_mean[$2] = $7; gw_rss[$2] = $8;
                          gw_cpu[$2] = $10; gw_cli[$2] = $11; gw_sys[$2] = $12; if (!($2 in pg_rps)) order[++n] = $2
                          base = $2; sub(/@1loop$/, "", base); if (base != $2) { pg_of[$2] = base } }
        $1 == "pgbench" { pg_of[$2] = $2 }
        END {
            printf "%-26s %10s %10s %7s | %9s %9s %9s | %9s %9s %7s | %8s %8s\n", "run", "pg tx/s", "gw req/s",
                "gw/pg", "pg p50us", "gw p50us", "+p50 us", "pg p99us", "gw p99us", "p99 x", "RSS kB", "cpu/req";
            for (i = 1; i <= n; i++) {
                k = order[i];
                if (!(k in gw_rps)) continue;
                b = (k in pg_of) ? pg_of[k] : "";
                havepg = (b != "" && (b in pg_rps));
                ratio = (havepg && pg_rps[b] > 0) ? sprintf("%.2f", gw_rps[k] / pg_rps[b]) : "-";
                added = havepg ? sprintf("%.0f", gw_p50[k] - pg_p50[b]) : "-";
                p99x = (havepg && pg_p99[b] > 0) ? sprintf("%.1f", gw_p99[k] / pg_p99[b]) : "-";
                printf "%-26s %10s %10s %7s | %9s %9s %9s | %9s %9s %7s | %8s %8s\n", k,
                    havepg ? sprintf("%.0f", pg_rps[b]) : "-", sprintf("%.0f", gw_rps[k]), ratio,
                    havepg ? pg_p50[b] : "-", gw_p50[k], added,
                    havepg ? pg_p99[b] : "-", gw_p99[k], p99x,
                    gw_rss[k], gw_cpu[k];
                if (k ~ /^lookup-c16-/ && k !~ /@1loop$/ && havepg) { rsum += gw_rps[k] / pg_rps[b]; rn++ }
                if (gw_rss[k] > rssmax) rssmax = gw_rss[k];
            }
            printf "\nCPU per request, microseconds (user+sys; machine = all processes, from /proc/stat):\n";
            printf "%-26s %12s %12s | %12s %12s %12s %14s\n", "run", "pg: pgbench", "pg: machine",
                "gw: gateway", "gw: loadgen", "gw: machine", "gw-pg machine";
            for (i = 1; i <= n; i++) {
                k = order[i];
                if (!(k in gw_rps)) continue;
                b = (k in pg_of) ? pg_of[k] : "";
                d = (b in pg_sys) ? sprintf("%+.1f", gw_sys[k] - pg_sys[b]) : "-";
                printf "%-26s %12s %12s | %12s %12s %12s %14s\n", k, (b in pg_cli) ? pg_cli[b] : "-",
                    (b in pg_sys) ? pg_sys[b] : "-", gw_cpu[k], gw_cli[k], gw_sys[k], d;
            }
            printf "\n";
            if (rn) printf "lookup c=16 throughput ratio gw/pg (main gateway): mean %.2f over %d runs (target >= 0.90 on 2 cores)\n", rsum / rn, rn;
            if ("lookup-c1" in pg_p50)
                printf "lookup c=1 added p50 latency: %.0f us (gw p50 %s - pg p50 %s; vs pg mean %s: %.0f us) (target <= 100 us)\n",
                    gw_p50["lookup-c1"] - pg_p50["lookup-c1"], gw_p50["lookup-c1"], pg_p50["lookup-c1"],
                    pg_mean["lookup-c1"], gw_p50["lookup-c1"] - pg_mean["lookup-c1"];
            k = "list-c" c;
            if (k in pg_rps) printf "list   c=%s throughput ratio gw/pg: %.2f\n", c, gw_rps[k] / pg_rps[k];
            printf "gateway max RSS under load: %d kB = %.1f MB (target <= 24 MB)\n", rssmax, rssmax / 1024;
        }' "${RESULTS}"
    printf '\n(p50/p99 in microseconds; pg = pgbench -M prepared over the Unix socket; gw = loadgen -> gateway ->\n'
    printf ' Unix socket; +p50 = gw p50 - pg p50; cpu/req = gateway user+sys CPU per request)\n'
}
summary | tee "${WORK}/summary.txt"
if [[ -f "${WORK}/perf-syscalls.txt" ]]; then
    printf '\n'
    cat "${WORK}/perf-syscalls.txt"
fi
