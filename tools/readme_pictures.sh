#!/usr/bin/env bash
# Remake the README's pictures from the bundled example (about 9 minutes on two CPU
# cores, the kernels compiled): the contact sheet of the main job, the keyframe sheet
# (analogy alone, one keyframe, two keyframes) and the analogy picture (A, B', A', B).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DIVA_VENV:-.venv}"
py="$venv/bin/python"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
example=tools/example

"$py" -m diva_numba transfer "$example/style.png" "$example/clip.mp4" -o "$scratch/analogy.mp4" \
    --device cpu "$@"
"$py" -m diva_numba transfer "$example/style.png" "$example/clip.mp4" -o "$scratch/one.mp4" \
    --device cpu --style-frame 24 "$@"
"$py" -m diva_numba transfer "$example/style.png" "$example/clip.mp4" -o "$scratch/two.mp4" \
    --device cpu --style-frame 24 --key "47:$example/key-47.png" "$@"

for run in analogy one two; do
    echo "warping error, $run:"
    "$py" -m diva_numba metrics warp-error "$scratch/$run.mp4" --reference "$example/clip.mp4"
done
"$py" tools/contact_sheet.py "$example/clip.mp4" "$scratch/one.mp4" -o "$example/contact-sheet.jpg" \
    --frames 0 16 32 47 --labels input "output (--style-frame 24)"
"$py" tools/contact_sheet.py "$example/clip.mp4" "$scratch/analogy.mp4" "$scratch/one.mp4" \
    "$scratch/two.mp4" -o "$example/keyframes-sheet.jpg" --frames 0 16 32 47 \
    --labels input "analogy alone" "one keyframe" "two keyframes"

"$py" - "$scratch" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from skimage import data

from diva_numba import AnalogyParams, analogy_files
from diva_numba.images import load_image, resize, save_image

scratch = Path(sys.argv[1])
astronaut = resize(data.astronaut(), 256, 256)
save_image(scratch / "a.png", astronaut)
analogy_files(scratch / "a.png", "tools/example/style.png", scratch / "pair",
              AnalogyParams.for_device("cpu"), device="cpu")
pictures = [astronaut, load_image("tools/example/style.png"),
            load_image(scratch / "pair" / "A_prime.png"), load_image(scratch / "pair" / "B.png")]
height = 256
row = [resize(p, height, round(p.shape[1] * height / p.shape[0])) for p in pictures]
save_image(Path("tools/example/analogy.jpg"), np.concatenate(row, axis=1))
EOF
echo "pictures written to $example/"
