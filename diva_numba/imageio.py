"""Reading and writing still images, and choosing the working size.

Images enter the pipeline as RGB uint8 ``(H, W, 3)`` NumPy arrays. Grayscale,
palette, RGBA and 16-bit files are accepted and converted; where the
conversion drops information a notice is logged on the ``diva_numba`` logger.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from diva_numba.errors import InputError, OutputError

log = logging.getLogger("diva_numba")

#: The short side below which an image is refused: at 32 px the coarsest
#: feature level (relu5_1) is 2x2, the least that a patch search can use.
MIN_SIDE = 32
#: Area above which inputs are scaled down (the reference code's limit).
MAX_AREA = 350_000


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8.

    Parameters
    ----------
    path : path-like
        PNG, JPEG, BMP, TIFF or WebP file.

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
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
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
    height: int, width: int, *, long_side: int | None = None, max_area: int = MAX_AREA
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
            "ask for a larger --size"
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
    atomic_write_bytes(path, encoded.tobytes())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    except FileNotFoundError:
        raise OutputError(f"{path}: directory {directory} does not exist") from None
    except PermissionError:
        raise OutputError(f"{path}: directory {directory} is not writable") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
