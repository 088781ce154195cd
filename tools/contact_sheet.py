"""A contact sheet: chosen frames of a clip beside the same frames of one or more outputs.

    python tools/contact_sheet.py CLIP OUT.mp4 [OUT2.mp4 ...] -o sheet.jpg
        [--frames 0 16 32 47] [--labels input "one keyframe" ...]

Every video is decoded, each chosen frame scaled to the first output's size,
and the frames laid out one row per frame, one column per video, with a
label over each column.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from diva_numba.images import resize, save_image
from diva_numba.video import probe_video, read_frames

LABEL_HEIGHT = 18


def frames_of(path: Path, indices: list[int], shape: tuple[int, int]) -> list[np.ndarray]:
    wanted = set(indices)
    found = {
        i: resize(f, *shape) for i, f in read_frames(path, end=max(indices) + 1) if i in wanted
    }
    return [found[i] for i in indices]


def label(text: str, width: int) -> np.ndarray:
    strip = np.full((LABEL_HEIGHT, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, LABEL_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)  # fmt: skip
    return strip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("outputs", type=Path, nargs="+")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--frames", type=int, nargs="+", default=[0, 16, 32, 47])
    parser.add_argument("--labels", nargs="+")
    args = parser.parse_args()
    videos = [args.clip, *args.outputs]
    labels = args.labels or ["input", *(p.stem for p in args.outputs)]
    first = probe_video(args.outputs[0])
    shape = (first.height, first.width)
    columns = []
    for video, text in zip(videos, labels, strict=True):
        tiles = frames_of(video, args.frames, shape)
        columns.append(np.concatenate([label(text, shape[1]), *tiles], axis=0))
    gap = np.full((columns[0].shape[0], 4, 3), 255, np.uint8)
    sheet = np.concatenate([c for column in columns for c in (column, gap)][:-1], axis=1)
    save_image(args.output, sheet)
    print(args.output)


if __name__ == "__main__":
    main()
