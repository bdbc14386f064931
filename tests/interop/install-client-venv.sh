#!/usr/bin/env bash
# Create (or reuse) a virtualenv holding the real parsec-cloud 2.10.0 client, used by the
# interoperability tests in this directory as a test peer only.
#
# Usage: install-client-venv.sh [DIR]      (default DIR: <repo>/.client-venv, gitignored)
#
# Idempotent: once the install has completed and been checked, a marker file records the
# pinned versions and later runs return at once. Delete DIR (or the marker) to force a rebuild.
# Needs python3.11 on PATH (or PYTHON=/path/to/python3.11) and, at run time, Debian's libfuse2.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-$repo/.client-venv}"
python="${PYTHON:-python3.11}"

# Everything that defines the environment: a change here invalidates the marker.
# fusepy: the client core imports its mountpoint module (hence `fuse`, which loads
# libfuse.so.2) even with mountpoints disabled; the [backend] extra does not pull it in.
client_pkgs=("parsec-cloud[backend]==2.10.0" "pypac==0.16.0" "psutil==5.9.8" "fusepy==3.0.1")
attrs_pin="attrs==22.2.0"
marker_content="${client_pkgs[*]} $attrs_pin compat-pth-v1"
marker="$venv/.parsec-interop-complete"

if [[ -f "$marker" && "$(cat "$marker")" == "$marker_content" && -x "$venv/bin/parsec" ]]; then
    echo "client venv already complete: $venv"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2'; then
    echo "warning: libfuse2 not found; the client core will not import (apt-get install -y libfuse2)" >&2
fi

rm -f "$marker"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$vpy" -m pip install --quiet "${client_pkgs[@]}"
# parsec-cloud 2.10.0 pins an attrs whose certificate handling breaks on Python 3.11.
"$vpy" -m pip install --quiet --no-deps "$attrs_pin"

# Some of the client's dependencies still import the ABCs from `collections`, removed in 3.10.
# A .pth hook rather than sitecustomize.py: Debian's own Python ships a sitecustomize module
# in its standard library, which would shadow one placed in the venv's site-packages.
site="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$site/sitecustomize.py"
cat > "$site/_parsec_interop_compat.py" <<'PY'
"""Restore the `collections` ABC aliases that pre-3.10 code in the parsec-cloud 2.10.0
dependency tree still expects. Written by tests/interop/install-client-venv.sh and loaded at
start-up by _parsec_interop_compat.pth."""
import collections
import collections.abc

for _name in (
    "Mapping",
    "MutableMapping",
    "Sequence",
    "Iterable",
    "Callable",
    "Set",
    "MutableSet",
    "Hashable",
):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))
del _name
PY
echo "import _parsec_interop_compat" > "$site/_parsec_interop_compat.pth"

# Check: the CLI starts and the client core imports (this is where a missing libfuse2 shows).
# From / : in the repository, `python -c` would import our own top-level parsec/ package.
cd /
"$venv/bin/parsec" --help >/dev/null
"$venv/bin/parsec" core --help >/dev/null
"$vpy" -c 'import parsec.core.logged_core, parsec.core.mountpoint, parsec.core.invite, parsec.backend.cli' >/dev/null

echo "$marker_content" > "$marker"
echo "client venv ready: $venv"
