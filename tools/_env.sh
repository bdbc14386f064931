# Sourced by tools/serve and tools/test: find a Python 3.11 and a tox of our own.
#
# Debian 12's python3 refuses `pip install` outside a virtualenv (PEP 668) and ships tox 3,
# so tox 4 goes into a virtualenv of its own, .tools-venv/ (gitignored), made once.

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_venv="$repo/.tools-venv"
tox_spec="tox>=4.11,<5"

# Debian packages a step needs; installed when we are root, listed otherwise.
need_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "tools: installing Debian packages: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        echo "tools: missing Debian packages; as root run:" >&2
        echo "    apt-get install --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
}

python=""
for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        python="$(command -v "$candidate")"
        break
    fi
done
if [ -z "$python" ]; then
    echo "tools: Python 3.11 not found (Debian 12: apt-get install python3)" >&2
    exit 1
fi
# Debian splits venv (ensurepip) out of its python3 package.
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    need_packages python3-venv
fi

if [ ! -x "$tools_venv/bin/tox" ]; then
    echo "tools: creating $tools_venv with $tox_spec" >&2
    "$python" -m venv "$tools_venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$tools_venv/bin/pip" install -q "$tox_spec"
fi
tox="$tools_venv/bin/tox"
