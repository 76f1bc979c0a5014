"""Still images as inputs: which files are images, and reading one upright as RGB. Pure functions (Pillow).

An image is a one-frame input: frame 0 at time 0. EXIF orientation is applied (a phone's portrait photo is
upright, its face boxes in the upright pixels), grayscale, palette, CMYK and RGBA images become RGB (alpha
dropped over black, as the detector would see a transparent background).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .video import DecodeError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "MPO"})  # Pillow's names (MPO: a camera's JPEG)


def is_image(path: str | os.PathLike) -> bool:
    """By its name: JPEG, PNG, WebP or BMP (what the content is, ``read_image`` finds out)."""
    return Path(str(path)).suffix.lower() in IMAGE_EXTENSIONS


HEADER_BYTES = 1 << 20  # what the probe reads of a JPEG: its header and EXIF (a photo's pixels are megabytes more)


class NotWhole(Exception):
    """``opened(path, head)`` read the first ``head`` bytes of a longer JPEG, and they were not enough."""


@contextmanager
def opened(path: str | os.PathLike, head: int | None = None):
    """``with opened(path) as img``: the file opened by Pillow, its header read and its pixels not yet decoded.
    DecodeError with the reason for a file that is missing, empty, not an image or of another format, and for any
    failure while the block decodes it (truncated data). A URI is read through pyarrow.
    ``head``: of a JPEG (its header and EXIF come before its pixels) only the first ``head`` bytes are read, and
    NotWhole is raised where the file is longer and they are not enough; other files are read whole (a PNG's EXIF
    may follow its pixels)."""
    from PIL import Image, UnidentifiedImageError

    from . import storage

    try:
        with storage.open_input(path) as f:
            data = f.read() if head is None else f.read(head + 1)
            part = head is not None and len(data) > head  # the first bytes of a longer file
            if part and not data.startswith(b"\xff\xd8\xff"):  # not a JPEG: the rest too
                data, part = data + f.read(), False
    except FileNotFoundError:
        raise DecodeError(f"{path}: file not found") from None
    except PermissionError:
        raise DecodeError(f"{path}: permission denied (file is not readable)") from None
    except IsADirectoryError:
        raise DecodeError(f"{path}: is a directory, not an image file") from None
    except OSError as exc:
        raise DecodeError(f"{path}: cannot read file ({exc})") from None
    if not data:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    import io

    try:
        with Image.open(io.BytesIO(data[:head] if part else data)) as img:
            if img.format not in IMAGE_FORMATS:
                raise DecodeError(f"{path}: {img.format} image; images must be JPEG, PNG, WebP or BMP")
            yield img
    except DecodeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        if part:  # the first bytes were not enough: the caller reads the whole file
            raise NotWhole(path) from None
        if isinstance(exc, UnidentifiedImageError):
            raise DecodeError(f"{path}: not an image file, or a corrupt one") from None
        raise DecodeError(f"{path}: cannot decode the image: {exc}") from None  # truncated data, a broken header


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image upright (EXIF orientation applied), uint8 RGB [H, W, 3]; DecodeError as ``opened`` says."""
    from PIL import Image, ImageOps

    with opened(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            black = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(black, img)
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def image_info(path: str | os.PathLike) -> dict:
    """The probe of an image, in VideoInfo's fields (one frame, no duration, no rate), from its header: the size
    upright (EXIF orientations 5-8 turn it a quarter). Of a JPEG only the first ``HEADER_BYTES`` are read (a
    folder of photos on S3 is not fetched twice), unless its header is longer; other images are read whole. The
    pixels are decoded once, by the face actor (``image_frames``), where a truncated file fails."""
    def upright(img) -> tuple[int, int]:
        w, h = img.size
        return (h, w) if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)

    try:
        with opened(path, HEADER_BYTES) as img:
            w, h = upright(img)
    except NotWhole:
        with opened(path) as img:
            w, h = upright(img)
    return {"width": int(w), "height": int(h), "rotation": 0, "native_fps": None, "duration_s": 0.0,
            "header_frames": 1, "codec": "image", "has_audio": False, "image": True}


def image_frames(path):
    """A decoder's ``iter_frames`` for an image: (0, 0.0, RGB frame) once; returns 1 (frames decoded)."""
    yield 0, 0.0, read_image(path)
    return 1
