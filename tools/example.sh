#!/usr/bin/env bash
# The main job on the bundled example: set up a virtual environment (once), then
# give the Big Buck Bunny clip the look of its painted keyframe (a painting of frame 24). The model is
# fetched on first use. Extra arguments go to `diva-numba transfer`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DIVA_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e .
exec "$venv/bin/diva-numba" transfer tools/example/style.png tools/example/clip.mp4 \
    -o example-out.mp4 --style-frame 24 --preview --overwrite "$@"
