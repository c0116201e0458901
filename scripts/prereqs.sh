# Sourced by scripts/demo.sh and scripts/test.sh: makes sure the system
# packages pghalo needs are here, installing them with apt-get when it can,
# and saying plainly what is missing when it cannot.

pghalo_have_pg_server() {
    local dir
    if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then return 0; fi
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then return 0; fi
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_basebackup" ]; then return 0; fi
    done
    return 1
}

pghalo_have_libclang() {
    # libclang itself, not libclang-cpp (which LLVM's tools bring along).
    compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
        compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null ||
        compgen -G '/usr/lib/*/libclang.so*' >/dev/null
}

# Packages to install, one per missing prerequisite.
pghalo_missing_packages() {
    local missing=()
    pghalo_have_pg_server || missing+=(postgresql)
    command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
    pghalo_have_libclang || missing+=(libclang-dev)
    command -v cc >/dev/null 2>&1 || missing+=(gcc)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    echo "${missing[@]}"
}

pghalo_ensure_prereqs() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "pghalo: cargo is not on PATH; install the Rust toolchain (rustup) first" >&2
        return 1
    fi
    local missing
    missing="$(pghalo_missing_packages)"
    [ -z "$missing" ] && return 0

    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo)
        else
            echo "pghalo: missing system packages: $missing" >&2
            echo "pghalo: not root and no password-less sudo; install them with: sudo apt-get install $missing" >&2
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "pghalo: missing system packages: $missing (Debian names); this system has no apt-get, install their equivalents" >&2
        return 1
    fi
    echo "pghalo: installing $missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    case " $missing " in
        *" postgresql "*)
            # The lab makes its own clusters: keep Debian from creating and
            # starting a default one on port 5432.
            "${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
            "${sudo[@]}" mkdir -p /etc/postgresql-common/createcluster.d
            echo "create_main_cluster = false" | "${sudo[@]}" tee /etc/postgresql-common/createcluster.d/pghalo.conf >/dev/null
            ;;
    esac
    # shellcheck disable=SC2086
    if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends $missing >/dev/null; then
        echo "pghalo: apt-get could not install: $missing" >&2
        return 1
    fi
    missing="$(pghalo_missing_packages)"
    if [ -n "$missing" ]; then
        echo "pghalo: still missing after apt-get: $missing" >&2
        return 1
    fi
}

# The client tests (crates/pghalo/tests/clients/) run psycopg 3 with the
# python3 on PATH; pip installs it there when it is missing.
pghalo_have_psycopg() {
    python3 -c 'import psycopg' >/dev/null 2>&1
}

pghalo_ensure_python_prereqs() {
    if ! command -v python3 >/dev/null 2>&1; then
        echo "pghalo: python3 is not on PATH; the client tests need it with psycopg 3: apt-get install python3 python3-pip, then python3 -m pip install 'psycopg[binary]'" >&2
        return 1
    fi
    pghalo_have_psycopg && return 0
    if ! python3 -m pip --version >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "pghalo: installing python3-pip" >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null || true
        fi
        if ! python3 -m pip --version >/dev/null 2>&1; then
            echo "pghalo: $(command -v python3) has no pip; install python3-pip, then: python3 -m pip install 'psycopg[binary]'" >&2
            return 1
        fi
    fi
    echo "pghalo: installing psycopg 3 for $(command -v python3) (pip install 'psycopg[binary]')" >&2
    # A Debian system python refuses plain pip installs (PEP 668).
    python3 -m pip install --quiet 'psycopg[binary]' >/dev/null 2>&1 ||
        python3 -m pip install --quiet --break-system-packages 'psycopg[binary]' >/dev/null 2>&1 ||
        true
    if ! pghalo_have_psycopg; then
        echo "pghalo: could not install psycopg 3 for $(command -v python3); install it with: python3 -m pip install 'psycopg[binary]'" >&2
        return 1
    fi
}
