"""Reading and writing still images, and choosing the working size.

Images enter the pipeline as RGB uint8 ``(H, W, 3)`` NumPy arrays. Grayscale,
palette, RGBA and 16-bit files are accepted and converted; where the
conversion drops information a notice is logged on the ``diva_numba`` logger.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from diva_numba.errors import InputError, OutputError
from diva_numba.outputs import write_atomically

log = logging.getLogger("diva_numba")

#: The short side below which an image is refused: at 32 px the coarsest
#: feature level (relu5_1) is 2x2, the least that a patch search can use.
MIN_SIDE = 32
#: Area above which inputs are scaled down (the reference code's limit).
MAX_AREA = 350_000
#: Images are decoded at 1/2, 1/4 or 1/8 size while that leaves at least this area,
#: which keeps the decoded copy small and still well above MAX_AREA.
REDUCED_DECODE_AREA = 4 * MAX_AREA
#: Larger images are refused: decoding even a reduced copy needs gigabytes.
MAX_DECODE_PIXELS = 200_000_000
REDUCED_COLOUR_FLAGS = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def load_image(path: str | os.PathLike, *, full_size: bool = False) -> np.ndarray:
    """Read an image file as RGB uint8.

    Images far above :data:`MAX_AREA` are decoded at 1/2, 1/4 or 1/8 size,
    which is all the analogy uses of them; ``full_size`` keeps every pixel, for
    an output made at the image's own size. Either way an image of more than
    :data:`MAX_DECODE_PIXELS` is refused (a "decompression bomb").

    Parameters
    ----------
    path : path-like
        PNG, JPEG, BMP, TIFF or WebP file.
    full_size : bool, default False
        Never decode at a reduced size.

    Returns
    -------
    image : ndarray of uint8, shape (H, W, 3)

    Raises
    ------
    InputError
        If the file is missing, a directory, empty, not a decodable image, or
        smaller than :data:`MIN_SIDE` on its short side.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise InputError(f"{path}: file is empty")
    decoded = _decode(data, path, reduce=not full_size)
    if decoded is None:
        raise InputError(f"{path}: not a readable image (corrupt, truncated or unknown format)")
    image = _to_rgb8(decoded, path)
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise InputError(
            f"{path}: {width}x{height} is too small; the network needs at least "
            f"{MIN_SIDE} px on each side"
        )
    return image


def _decode(data: np.ndarray, path: Path, *, reduce: bool) -> np.ndarray | None:
    """Decode, at reduced resolution when full resolution is far above what is used.

    The size comes from the file header, so a small file that expands to
    gigabytes (a "decompression bomb") is refused or shrunk before any pixel
    is decoded.
    """
    # Photos from phones and cameras store their orientation in EXIF, which only the
    # colour modes apply; JPEG has neither alpha nor 16 bits for UNCHANGED to keep.
    is_jpeg = data[:2].tobytes() == b"\xff\xd8"
    flags = cv2.IMREAD_COLOR if is_jpeg else cv2.IMREAD_UNCHANGED
    size = header_size(data)
    if size is not None:
        width, height = size
        if width * height > MAX_DECODE_PIXELS:
            raise InputError(
                f"{path}: {width}x{height} is too large to decode safely (more than "
                f"{MAX_DECODE_PIXELS // 1_000_000} megapixels); scale it down first"
            )
        factor = 1
        while reduce and factor < 8 and width * height / (2 * factor) ** 2 >= REDUCED_DECODE_AREA:
            factor *= 2
        if factor > 1:
            log.warning(
                "%s: %dx%d decoded at 1/%d size, in 8-bit colour", path, width, height, factor
            )
            flags = REDUCED_COLOUR_FLAGS[factor]
            if not is_jpeg:  # as at full size
                flags |= cv2.IMREAD_IGNORE_ORIENTATION
    try:
        return cv2.imdecode(data, flags)
    except cv2.error as exc:
        raise InputError(f"{path}: not a readable image ({_opencv_reason(exc)})") from None
    except MemoryError:
        raise InputError(f"{path}: not enough memory to decode it; scale it down first") from None


def header_size(data: np.ndarray) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG or JPEG header, or None for other or broken files."""
    head = data[:32].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if not head.startswith(b"\xff\xd8"):
        return None
    raw = data.tobytes()
    position = 2
    while position + 9 < len(raw):
        if raw[position] != 0xFF:
            return None
        marker = raw[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(raw[position + 2 : position + 4], "big")
        # Start-of-frame markers (baseline, progressive, ...), not DHT/JPG/DAC.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(raw[position + 5 : position + 7], "big")
            width = int.from_bytes(raw[position + 7 : position + 9], "big")
            return width, height
        position += 2 + length
    return None


def _opencv_reason(exc: Exception) -> str:
    """The message of an OpenCV error without its source location."""
    text = str(exc).strip().splitlines()[-1]
    return text.split(") ", 1)[-1].strip() or "decoder error"


def _to_rgb8(decoded: np.ndarray, path: Path) -> np.ndarray:
    if decoded.dtype == np.uint16:
        log.warning("%s: 16-bit image reduced to 8 bits per channel", path)
        decoded = (decoded.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif decoded.dtype in (np.float32, np.float64):
        log.warning("%s: floating-point image clipped to 0..1 and stored as 8 bits", path)
        decoded = (np.clip(decoded, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif decoded.dtype != np.uint8:
        raise InputError(f"{path}: unsupported pixel type {decoded.dtype}")
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    channels = decoded.shape[2]
    if channels == 1:
        return cv2.cvtColor(decoded[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        alpha = decoded[:, :, 3]
        if alpha.min() < 255:
            log.warning("%s: transparency dropped (composited over white)", path)
            weight = alpha.astype(np.float32)[:, :, None] / 255.0
            blended = decoded[:, :, :3].astype(np.float32) * weight + 255.0 * (1.0 - weight)
            decoded = np.rint(blended).astype(np.uint8)
        else:
            decoded = decoded[:, :, :3]
        return cv2.cvtColor(np.ascontiguousarray(decoded), cv2.COLOR_BGR2RGB)
    if channels == 3:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    raise InputError(f"{path}: images with {channels} channels are not supported")


def working_size(
    height: int,
    width: int,
    *,
    long_side: int | None = None,
    max_area: int = MAX_AREA,
    option: str = "--size",
) -> tuple[int, int]:
    """The (H, W) an image is processed at.

    Parameters
    ----------
    height, width : int
        The image's size.
    long_side : int, optional
        Scale so that the longer side has this many pixels (up or down).
    max_area : int
        Scale down further, keeping the aspect ratio, if the area exceeds this.
    option : str
        The command-line option that sets ``long_side``, which the error for a
        size below the minimum asks to raise.

    Returns
    -------
    (height, width) : tuple of int
    """
    scale = 1.0 if long_side is None else long_side / max(height, width)
    if height * width * scale * scale > max_area:
        scale = (max_area / (height * width)) ** 0.5
    new_h = max(1, round(height * scale))
    new_w = max(1, round(width * scale))
    if min(new_h, new_w) < MIN_SIDE:
        raise InputError(
            f"a working size of {new_w}x{new_h} is below the minimum of {MIN_SIDE} px per side; "
            f"ask for a larger {option}"
        )
    return new_h, new_w


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W, C) image: area filter to shrink, bicubic to enlarge."""
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(image, (width, height), interpolation=interpolation)


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB uint8 (H, W, 3) image atomically (temporary file, then rename)."""
    path = Path(path)
    suffix = path.suffix.lower() or ".png"
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError(f"{path}: cannot encode an image as {suffix}")
    write_atomically(path, encoded.tobytes())
