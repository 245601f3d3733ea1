#!/usr/bin/env bash
# Build the Debian package of the gateway with plain dpkg-deb (no packaging tool to install).
#
#   scripts/package.sh [--binary PATH | --profile NAME] [--revision N] [--out DIR] [--compress TYPE]
#
#   --binary PATH    package this binary instead of building one (tests pass their debug build)
#   --profile NAME   cargo profile to build [release]
#   --revision N     Debian revision: the package version is <Cargo.toml version>-N [1]
#   --out DIR        where the .deb goes [target/debian]
#   --compress TYPE  dpkg-deb compression: xz, gzip, zstd or none [xz]
#
# Prints the path of the .deb on stdout. Contents: /usr/bin/stonescriptdb-gateway, the systemd unit
# (scripts/stonescriptdb-gateway.service), /etc/stonescriptdb-gateway/env (conffile: every setting
# commented), scripts/gateway-login.sql under /usr/share/stonescriptdb-gateway, the README; maintainer
# scripts from scripts/debian/. Depends only on libc6 (checked from the binary's needed libraries).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME=stonescriptdb-gateway

log() { printf '[package.sh] %s\n' "$*" >&2; }
die() { printf '[package.sh] ERROR: %s\n' "$*" >&2; exit 1; }

binary=""
profile=release
revision=1
out="${ROOT}/target/debian"
compress=xz
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        --revision) revision="${2:?--revision needs a number}"; shift 2 ;;
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --compress) compress="${2:?--compress needs a type}"; shift 2 ;;
        -h | --help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ "${revision}" =~ ^[0-9][0-9a-z.+~]*$ ]] || die "--revision must start with a digit: ${revision}"

for tool in dpkg-deb dpkg; do
    command -v "${tool}" >/dev/null 2>&1 || die "${tool} not found (Debian/Ubuntu: apt-get install dpkg)"
done

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "${ROOT}/Cargo.toml" | head -n 1)"
[[ -n "${version}" ]] || die "no version in Cargo.toml"
arch="$(dpkg --print-architecture)"

# --- the binary ---------------------------------------------------------------------------------

if [[ -z "${binary}" ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust with rustup or pass --binary"
    locked=()
    if git -C "${ROOT}" ls-files --error-unmatch Cargo.lock >/dev/null 2>&1; then
        locked=(--locked)
    fi
    log "building: cargo build --profile ${profile} ${locked[*]}"
    (cd "${ROOT}" && cargo build --profile "${profile}" "${locked[@]}" --bin "${NAME}" >&2)
    dir="${profile}"
    [[ "${profile}" == dev ]] && dir=debug
    binary="${CARGO_TARGET_DIR:-${ROOT}/target}/${dir}/${NAME}"
fi
[[ -x "${binary}" ]] || die "no executable at ${binary}"

# --- staging tree -------------------------------------------------------------------------------

work="$(mktemp -d "${TMPDIR:-/tmp}/ssdb-package.XXXXXX")"
trap 'rm -rf -- "${work}"' EXIT
stage="${work}/root"
mkdir -p "${stage}/DEBIAN" "${stage}/usr/bin" "${stage}/lib/systemd/system" "${stage}/etc/${NAME}" \
    "${stage}/usr/share/${NAME}/nginx" "${stage}/usr/share/doc/${NAME}"

install -m 0755 "${binary}" "${stage}/usr/bin/${NAME}"
if command -v strip >/dev/null 2>&1; then
    # Debug sections only: symbols stay, so a panic's backtrace still names functions.
    strip --strip-debug "${stage}/usr/bin/${NAME}"
else
    log "strip not found (binutils); packaging the binary as it is"
fi
install -m 0644 "${ROOT}/scripts/${NAME}.service" "${stage}/lib/systemd/system/${NAME}.service"
install -m 0644 "${ROOT}/scripts/gateway-login.sql" "${stage}/usr/share/${NAME}/gateway-login.sql"
# An example nginx site that terminates TLS in front of the gateway (README, "TLS"); not enabled.
install -m 0644 "${ROOT}/scripts/nginx/${NAME}.conf" "${stage}/usr/share/${NAME}/nginx/${NAME}.conf"
install -m 0644 "${ROOT}/README.md" "${stage}/usr/share/doc/${NAME}/README.md"
cat >"${stage}/usr/share/doc/${NAME}/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ${NAME}

Files: *
Copyright: the StoneScriptDB Gateway authors
License: see the project's repository
EOF
chmod 0644 "${stage}/usr/share/doc/${NAME}/copyright"

# The env file: the package's notes, then every setting of scripts/.env.example (its own two-line
# header left out), all commented. The secrets are added by postinst on the machine, never here.
{
    cat "${ROOT}/scripts/debian/env.head"
    sed '1,/^$/d' "${ROOT}/scripts/.env.example"
} >"${stage}/etc/${NAME}/env"
chmod 0640 "${stage}/etc/${NAME}/env"
if grep -Eq '^[[:space:]]*[A-Z_]+=' "${stage}/etc/${NAME}/env"; then
    die "the env file template sets a value; every setting must stay commented"
fi
printf '/etc/%s/env\n' "${NAME}" >"${stage}/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "${ROOT}/scripts/debian/${script}" "${stage}/DEBIAN/${script}"
done

# --- dependencies: libc6 only -------------------------------------------------------------------

# Every shared library the binary needs must come from libc6 (libgcc_s.so.1 comes with libgcc-s1,
# which libc6 itself depends on). The lowest libc6 is the newest GLIBC_x.y symbol version it uses.
needed="$(objdump -p "${stage}/usr/bin/${NAME}" 2>/dev/null | awk '$1 == "NEEDED" { print $2 }')" \
    || die "objdump (binutils) is needed to check the binary's libraries"
[[ -n "${needed}" ]] || die "objdump found no NEEDED libraries in ${binary} (static binary or no objdump?)"
while IFS= read -r lib; do
    case "${lib}" in
        libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | ld-linux*.so.* | libgcc_s.so.1) ;;
        *) die "the binary needs ${lib}, which is not part of libc; the package depends on libc only" ;;
    esac
done <<<"${needed}"
glibc="$(objdump -T "${stage}/usr/bin/${NAME}" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
[[ -n "${glibc}" ]] || die "cannot tell which glibc the binary needs"
depends="libc6 (>= ${glibc})"
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
    # Cross-check with Debian's own tool where it is installed (dpkg-dev).
    mkdir -p "${work}/src/debian"
    printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "${NAME}" "${NAME}" >"${work}/src/debian/control"
    shlibs="$(cd "${work}/src" && dpkg-shlibdeps -O "${stage}/usr/bin/${NAME}" 2>/dev/null || true)"
    log "dpkg-shlibdeps: ${shlibs:-<no answer>}"
    other="$(sed 's/^shlibs:Depends=//' <<<"${shlibs}" | tr ',' '\n' | sed 's/^ *//' | grep -Ev '^(libc6|libgcc-s1)( |$)' || true)"
    [[ -z "${other}" ]] || die "dpkg-shlibdeps says the binary also needs: ${other}"
fi

installed_size="$(du -sk --exclude=DEBIAN "${stage}" | cut -f1)"
maintainer="${DEB_MAINTAINER:-StoneScriptDB Gateway maintainers <stonescriptdb-gateway@localhost>}"
cat >"${stage}/DEBIAN/control" <<EOF
Package: ${NAME}
Version: ${version}-${revision}
Architecture: ${arch}
Maintainer: ${maintainer}
Installed-Size: ${installed_size}
Depends: ${depends}
Suggests: postgresql, nginx
Section: database
Priority: optional
Description: HTTP gateway beside PostgreSQL for SaaS platforms
 StoneScriptDB Gateway runs on the database VM. Platforms deploy their
 PostgreSQL schema folders to it and call their stored functions over
 HTTP/1.1 with JSON, each platform confined to its own PostgreSQL role
 and databases. Runs as a hardened systemd service; settings in
 /etc/stonescriptdb-gateway/env, database set-up with
 "stonescriptdb-gateway setup-db". An example nginx site for TLS in
 front is in /usr/share/stonescriptdb-gateway/nginx.
EOF
(cd "${stage}" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
    >"${stage}/DEBIAN/md5sums"
chmod 0644 "${stage}/DEBIAN/control" "${stage}/DEBIAN/conffiles" "${stage}/DEBIAN/md5sums"
# Directories as dpkg expects them, whatever the umask was.
find "${stage}" -type d -exec chmod 0755 {} +

mkdir -p "${out}"
deb="${out}/${NAME}_${version}-${revision}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${compress}" --build "${stage}" "${deb}" >&2
log "built ${deb} (Depends: ${depends})"
printf '%s\n' "${deb}"
