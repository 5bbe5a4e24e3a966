#!/usr/bin/env bash
# Create the project's virtualenv (usage: ensure_venv.sh VENV) with Python 3.11+.
# `make install` calls this when VENV has no python yet. A fresh Debian machine may have no
# python3 at all, or one without the venv module's ensurepip (Debian ships it apart, as
# python3.X-venv): as root with apt it installs what is missing; otherwise it says what to
# install and fails. PYTHON=... picks the interpreter; it must be 3.11 or newer.
set -u

VENV=${1:?usage: ensure_venv.sh VENV}
APT=(apt-get -y -q -o DPkg::Lock::Timeout=600)

say() { printf 'ensure_venv: %s\n' "$*" >&2; }

new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

if [ -n "${PYTHON:-}" ] && ! new_enough "$PYTHON"; then
    say "PYTHON=$PYTHON is not Python 3.11+ (set PYTHON=... to one that is)"
    exit 1
fi

find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && new_enough "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
    say "installing $* with apt"
    "${APT[@]}" update >/dev/null &&
        DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "$@" >/dev/null
}

python=$(find_python)
if [ -z "$python" ]; then
    if ! can_apt; then
        say "no Python 3.11+ found: install it (Debian 12: apt-get install python3 python3-venv)"
        exit 1
    fi
    apt_install python3 python3-venv || { say "apt could not install python3"; exit 1; }
    python=$(find_python) || { say "python3 from apt is older than 3.11"; exit 1; }
fi

if "$python" -m venv "$VENV" 2>"$VENV.err"; then
    rm -f "$VENV.err"
    exit 0
fi
rm -rf "$VENV"
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! can_apt; then
    say "$python -m venv failed:"
    sed 's/^/    /' "$VENV.err" >&2
    say "install the venv module (Debian: apt-get install python$version-venv) and rerun"
    rm -f "$VENV.err"
    exit 1
fi
rm -f "$VENV.err"
apt_install "python$version-venv" || apt_install python3-venv ||
    { say "apt could not install the venv module"; exit 1; }
"$python" -m venv "$VENV"
