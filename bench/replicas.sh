#!/usr/bin/env bash
# Read replicas: a read-heavy /call load (bench_get_item, a STABLE 1-row lookup) through a gateway
# that sends reads to a streaming replica (READ_REPLICAS=on) and through one that does not, side by
# side on the same primary, in the same run; plus the cost of the routing decision itself (a VOLATILE
# lookup through both gateways: the "on" one decides per call, then goes to the primary like "off").
#
#   bash bench/replicas.sh
#
# Environment (optional): BENCH_DURATION (8 s per run), BENCH_WARMUP (2 s), BENCH_REPEAT (3 rounds),
# BENCH_CONNS (16), BENCH_CLIENT_THREADS (2), BENCH_KEEP_WORK=1, LOADGEN (a built bench/loadgen.rs;
# default: built here with `cargo bench --no-run`).
# Starts a throwaway primary and a replica of it (pg_basebackup -R), stops everything on exit. On a
# small machine primary, replica, gateways and the load share the same cores: the replica adds work
# there, it does not add capacity; the ratio shows what routing costs or gains here, not on a fleet.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "${ROOT}/bench/lib.sh"

log() { printf '[replicas.sh] %s\n' "$*" >&2; }
die() { printf '[replicas.sh] ERROR: %s\n' "$*" >&2; exit 1; }

D="${BENCH_DURATION:-8}"
W="${BENCH_WARMUP:-2}"
REPEAT="${BENCH_REPEAT:-3}"
C="${BENCH_CONNS:-16}"
T="${BENCH_CLIENT_THREADS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ROOT}/target}"

REPLICA="" WORK="" PIDS=()
# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local status=$?
    trap '' INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "${pid}" 2>/dev/null || true
        wait "${pid}" 2>/dev/null || true
    done
    if [[ -n "${REPLICA}" ]]; then
        pg_cluster_stop "${REPLICA}" || true
        rm -rf -- "${REPLICA}"
    fi
    bench_pg_stop
    if [[ -n "${WORK}" && "${BENCH_KEEP_WORK:-0}" != 1 ]]; then
        rm -rf -- "${WORK}"
    fi
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d /tmp/ssdb-bench.XXXXXX)"
chmod 0755 "${WORK}"

# --- primary and replica -----------------------------------------------------------------

# The primary is the throwaway cluster of bench/lib.sh: DB_HOST, DB_PORT and DB_USER name it.
bench_pg_start bench
REPLICA="$(mktemp -d /tmp/ssdb-bench-replica.XXXXXX)"
pg_replica_init "${BENCH_PG_DIR}" "${DB_PORT}" "${REPLICA}" || die "could not make the replica"
RPORT="$(pg_cluster_start_free "${REPLICA}")" || die "could not start the replica"

# --- build and gateways ----------------------------------------------------------------------

log "building the gateway (bench-release)"
(cd "${ROOT}" && cargo build --profile bench-release --quiet)
bench_loadgen
# A copy under its own name (why: bench/lib.sh).
cp "${CARGO_TARGET_DIR}/bench-release/stonescriptdb-gateway" "${WORK}/ssdb-bench-gw"

# start_gateway NAME KEY=VALUE...: a gateway on the primary that knows the replica, on a free port
# (BENCH_GW_PORT); waits until it answers.
start_gateway() {
    local name="$1"
    shift
    bench_gateway_start "${WORK}/ssdb-bench-gw" "${WORK}/${name}.log" DB_REPLICAS="127.0.0.1:${RPORT}" "$@"
    PIDS+=("${BENCH_GW_PID}")
    bench_gateway_wait "gateway '${name}'"
}
start_gateway off READ_REPLICAS=off
OFF="${BENCH_GW_PORT}"
start_gateway on READ_REPLICAS=on
ON="${BENCH_GW_PORT}"
GATEWAY_URL="http://127.0.0.1:${OFF}" bash "${ROOT}/bench/setup.sh"
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:${ON}/health" | grep -q '"usable":true' && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:${ON}/health" | grep -q '"usable":true' || die "the replica never became usable"
# The replica has the database once its catalog rows have been replayed.
for _ in $(seq 100); do
    "${PSQL}" -X -At -h "$(pg_socketdir "${REPLICA}")" -p "${RPORT}" -U postgres -d bench_main -c 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
done

# run LABEL PORT FUNCTION: prints "rps p50 p99".
run() {
    local out
    out="$("${LOADGEN}" --addr "127.0.0.1:$2" --connections "${C}" --threads "${T}" --duration "${D}" \
        --warmup "${W}" --function "$3" --quiet)" || die "loadgen failed ($1)"
    grep -q ' errors=0 ' <<<"${out}" || die "errors in run $1: ${out}"
    printf '%s %s %s\n' "$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' <<<"${out}")" \
        "$(sed -n 's/.* p50_us=\([0-9.]*\).*/\1/p' <<<"${out}")" "$(sed -n 's/.* p99_us=\([0-9.]*\).*/\1/p' <<<"${out}")"
}

printf '%-6s %-28s %10s %8s %8s\n' round run rps p50_us p99_us >"${WORK}/table"
for r in $(seq "${REPEAT}"); do
    for spec in "off:${OFF}:bench_get_item" "on:${ON}:bench_get_item" \
        "off:${OFF}:bench_get_item_volatile" "on:${ON}:bench_get_item_volatile"; do
        IFS=: read -r name port fn <<<"${spec}"
        read -r rps p50 p99 < <(run "${name}-${fn}" "${port}" "${fn}")
        printf '%-6s %-28s %10s %8s %8s\n' "${r}" "${name} ${fn}" "${rps}" "${p50}" "${p99}" | tee -a "${WORK}/table" >&2
    done
done

served="$(curl -fsS "http://127.0.0.1:${ON}/metrics" | grep '^stonescriptdb_gateway_server_calls_total')"
{
    printf '\nPostgreSQL %s, %s cores, %s connections, %s loadgen threads, %s s per run (+%s s warm-up)\n' \
        "$("${PSQL}" -X -At -h "${DB_HOST}" -p "${DB_PORT}" -U postgres -d postgres -c 'SHOW server_version')" \
        "$(nproc)" "${C}" "${T}" "${D}" "${W}"
    cat "${WORK}/table"
    awk 'NR > 1 {k = $2 " " $3; s[k] += $4; n[k]++}
         END {
           on = s["on bench_get_item"] / n["on bench_get_item"]; off = s["off bench_get_item"] / n["off bench_get_item"];
           von = s["on bench_get_item_volatile"] / n["on bench_get_item_volatile"];
           voff = s["off bench_get_item_volatile"] / n["off bench_get_item_volatile"];
           printf "\nSTABLE lookup, replica reads on / off: %.3f (mean rps)\n", on / off;
           printf "VOLATILE lookup (routing decided, primary), on / off: %.3f (mean rps)\n", von / voff }' "${WORK}/table"
    printf '\ncalls per server of the "on" gateway:\n%s\n' "${served}"
} | tee "${WORK}/summary"
