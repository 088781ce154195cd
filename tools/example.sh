#!/usr/bin/env bash
# The main job on the bundled example: set up a virtual environment (once), then
# give the Big Buck Bunny clip the look of its painted keyframe (a painting of frame 24). The model is
# fetched on first use. Extra arguments go to `diva-numba transfer`.
#
# The package is installed (editable) on the first run, and again only when
# pyproject.toml changes: the code itself is read from the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DIVA_VENV:-.venv}"
stamp="$venv/.diva-numba-install"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
wanted="$("$venv/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest(), sys.version.split()[0])')"
if [ ! -x "$venv/bin/diva-numba" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "example.sh: installing diva-numba into $venv (once; a minute or two)" >&2
    log="$(mktemp)"
    # pip and setuptools talk a lot; their output is shown only when the install fails.
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -e . >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "example.sh: installing failed (the output above says why)" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$wanted" >"$stamp"
fi
exec "$venv/bin/diva-numba" transfer tools/example/style.png tools/example/clip.mp4 \
    -o example-out.mp4 --style-frame 24 --preview --overwrite "$@"
