#!/usr/bin/env bash
# Read replicas: a read-heavy /call load (bench_get_item, a STABLE 1-row lookup) through a gateway
# that sends reads to a streaming replica (READ_REPLICAS=on) and through one that does not, side by
# side on the same primary, in the same run; plus the cost of the routing decision itself (a VOLATILE
# lookup through both gateways: the "on" one decides per call, then goes to the primary like "off").
#
#   bash bench/replicas.sh
#
# Environment (optional): BENCH_DURATION (8 s per run), BENCH_WARMUP (2 s), BENCH_REPEAT (3 rounds),
# BENCH_CONNS (16), BENCH_CLIENT_THREADS (2), BENCH_KEEP_WORK=1.
# Starts a throwaway primary and a replica of it (pg_basebackup -R), stops everything on exit. On a
# small machine primary, replica, gateways and the load share the same cores: the replica adds work
# there, it does not add capacity; the ratio shows what routing costs or gains here, not on a fleet.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/pg-cluster.sh
source "${ROOT}/scripts/lib/pg-cluster.sh"

log() { printf '[replicas.sh] %s\n' "$*" >&2; }
die() { printf '[replicas.sh] ERROR: %s\n' "$*" >&2; exit 1; }

D="${BENCH_DURATION:-8}"
W="${BENCH_WARMUP:-2}"
REPEAT="${BENCH_REPEAT:-3}"
C="${BENCH_CONNS:-16}"
T="${BENCH_CLIENT_THREADS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ROOT}/target}"

PRIMARY="" REPLICA="" WORK="" PIDS=()
# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local status=$?
    trap '' INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "${pid}" 2>/dev/null || true
        wait "${pid}" 2>/dev/null || true
    done
    for dir in "${REPLICA}" "${PRIMARY}"; do
        if [[ -n "${dir}" ]]; then
            pg_cluster_stop "${dir}" || true
            rm -rf -- "${dir}"
        fi
    done
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
pg_ensure_installed

# --- primary and replica -----------------------------------------------------------------

PRIMARY="$(mktemp -d /tmp/ssdb-bench-pg.XXXXXX)"
pg_cluster_init "${PRIMARY}" test
PPORT="$(pg_cluster_start_free "${PRIMARY}")" || die "could not start the primary"
REPLICA="$(mktemp -d /tmp/ssdb-bench-replica.XXXXXX)"
pg_replica_init "${PRIMARY}" "${PPORT}" "${REPLICA}" || die "could not make the replica"
RPORT="$(pg_cluster_start_free "${REPLICA}")" || die "could not start the replica"
DB_HOST="$(pg_socketdir "${PRIMARY}")"
PSQL="${PG_BINDIR}/psql"
export PSQL

# --- build and gateways ----------------------------------------------------------------------

log "building the gateway (bench-release) and the load generator"
(cd "${ROOT}" && cargo build --profile bench-release --quiet)
LOADGEN="$(cd "${ROOT}" && cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null \
    | grep '"name":"loadgen"' | grep -o '"executable":"[^"]*"' | tail -n 1 | sed 's/"executable":"\(.*\)"/\1/')"
[[ -n "${LOADGEN}" && -x "${LOADGEN}" ]] || die "could not build bench/loadgen.rs"
cp "${CARGO_TARGET_DIR}/bench-release/stonescriptdb-gateway" "${WORK}/ssdb-bench-gw"

# start_gateway NAME KEY=VALUE...: prints its port.
start_gateway() {
    local name="$1" port
    shift
    port="$(pg_free_port)"
    (cd "${WORK}" && exec env DB_HOST="${DB_HOST}" DB_PORT="${PPORT}" DB_USER=postgres GATEWAY_HOST=127.0.0.1 \
        GATEWAY_PORT="${port}" LOG_LEVEL=warn DB_REPLICAS="127.0.0.1:${RPORT}" "$@" \
        "${WORK}/ssdb-bench-gw" >"${WORK}/${name}.log" 2>&1) &
    PIDS+=("$!")
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "http://127.0.0.1:${port}/health" 2>/dev/null && break
        sleep 0.1
    done
    printf '%s\n' "${port}"
}
OFF="$(start_gateway off READ_REPLICAS=off)"
ON="$(start_gateway on READ_REPLICAS=on)"
curl -fsS -o /dev/null "http://127.0.0.1:${OFF}/health" || die "gateway 'off' does not answer"
curl -fsS -o /dev/null "http://127.0.0.1:${ON}/health" || die "gateway 'on' does not answer"
GATEWAY_URL="http://127.0.0.1:${OFF}" DB_HOST="${DB_HOST}" DB_PORT="${PPORT}" DB_USER=postgres bash "${ROOT}/bench/setup.sh"
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
        "$("${PSQL}" -X -At -h "${DB_HOST}" -p "${PPORT}" -U postgres -d postgres -c 'SHOW server_version')" \
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
