"""Decoding one photo safely into an 8-bit RGB image.

Photos come from the wild: truncated downloads, files that are not images,
16-bit scans, CMYK prints, transparent PNGs, animations, phone photos that are
stored sideways with an EXIF note saying how to turn them. ``load_photo`` turns
each into the same thing, a fully decoded RGB image the right way up, or raises
``PhotoError`` saying which photo and why, so that a batch job can skip it and
carry on. The cases and their outcomes are listed in ``docs/robustness.md``.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MAX_PIXELS", "PhotoError", "load_photo"]

logger = logging.getLogger(__name__)

MAX_PIXELS = 64_000_000
"""Largest photo accepted, in pixels (width times height).

A photo declaring more is refused from its header, before any pixel is
decoded, so a small file claiming to be enormous cannot exhaust memory.
"""

# Limitation: Pillow refuses on its own anything above twice
# PIL.Image.MAX_IMAGE_PIXELS (about 179 megapixels) while opening, so raising
# MAX_PIXELS beyond that has no effect unless Pillow's limit is raised too.

# Limitation: this module never sets PIL.ImageFile.LOAD_TRUNCATED_IMAGES, and
# relies on it staying False; if other code in the same process sets it, a
# truncated photo decodes into a partly grey image instead of raising.

# Pillow's decoders report broken files through several exception types; these
# are the ones that mean "this file is damaged", as opposed to a bug here.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)


class PhotoError(ValueError):
    """A photo cannot be loaded.

    Attributes:
        source: what was passed to ``load_photo`` (a path, image or array).
        reason: why it cannot be loaded, and what to do where something can
            be done.
    """

    def __init__(self, source: object, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"cannot load photo {_describe(source)}: {reason}")


def load_photo(
    source: str | os.PathLike | Image.Image | np.ndarray,
) -> Image.Image:
    """Return a photo as a fully decoded 8-bit RGB image, the right way up.

    - The EXIF orientation tag, when present, is applied (and then dropped).
    - Transparent pixels are composited onto white.
    - 16-bit greyscale is scaled to 8 bits (65535 becomes 255).
    - Palette, greyscale, CMYK and other colour modes are converted to RGB.
    - Of an animation, only the first frame is used.

    Args:
        source: a file path; a PIL image (not modified: a new image is
            returned); or an array, ``(h, w, 3)`` uint8 RGB or ``(h, w)``
            uint8 grey.

    Returns:
        A new ``PIL.Image.Image`` in mode ``"RGB"``, already loaded, not tied
        to any open file.

    Raises:
        PhotoError: the file is missing, a folder, empty, not an image,
            truncated or corrupt, or declares more than ``MAX_PIXELS``
            pixels; or the array has the wrong shape or dtype.
        TypeError: ``source`` is none of the types above.
    """
    if isinstance(source, np.ndarray):
        return _photo_from_array(source)
    if isinstance(source, Image.Image):
        return _decode(source, source)
    if isinstance(source, (str, os.PathLike)):
        return _photo_from_file(Path(source))
    raise TypeError(
        f"load_photo takes a path, a PIL image or a numpy array, got "
        f"{type(source).__name__}"
    )


def _photo_from_file(path: Path) -> Image.Image:
    """Open, check and decode the photo stored at ``path``."""
    if not path.exists():
        raise PhotoError(path, "the file does not exist")
    if path.is_dir():
        raise PhotoError(path, "it is a folder, not a file")
    if not path.is_file():
        raise PhotoError(path, "it is not a regular file")
    if path.stat().st_size == 0:
        raise PhotoError(path, "the file is empty (0 bytes)")

    try:
        with Image.open(path) as image:
            return _decode(image, path)
    except PhotoError:
        raise
    except Image.DecompressionBombError:
        raise PhotoError(path, _too_large_reason(_declared_size(path))) from None
    except UnidentifiedImageError:
        raise PhotoError(
            path, "the file is not an image in any format Pillow can read"
        ) from None
    except PermissionError:
        raise PhotoError(path, "permission to read the file was denied") from None
    except _DECODE_ERRORS as error:
        raise PhotoError(path, f"the file is damaged ({error})") from None


def _decode(image: Image.Image, source: object) -> Image.Image:
    """Check the declared size, decode, turn upright and convert to RGB."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise PhotoError(source, _too_large_reason((width, height)))

    try:
        image.load()
    except _DECODE_ERRORS as error:
        raise PhotoError(
            source, f"the image data is truncated or corrupt ({error})"
        ) from None

    try:
        upright = ImageOps.exif_transpose(image)
    except (*_DECODE_ERRORS, KeyError, TypeError) as error:
        # The pixels are fine; only the note on how to turn them is unreadable.
        logger.warning(
            "%s: unreadable EXIF orientation (%s); using the photo as stored",
            _describe(source),
            error,
        )
        upright = image

    return _to_rgb(upright, source)


def _to_rgb(image: Image.Image, source: object) -> Image.Image:
    """Return a new 8-bit RGB image from a decoded image of any mode."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow converts these by clipping at 255, which turns most of a
        # 16-bit photo white; scale the 0-65535 range to 0-255 instead.
        # Limitation: 32-bit mode "I" is assumed to hold 0-65535 as 16-bit
        # PNGs and TIFFs do; larger values are clipped to white.
        values = np.asarray(image, dtype=np.float64)
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")

    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")

    # Limitation: embedded ICC colour profiles are ignored; pixel values are
    # taken as sRGB, which shifts colours of photos saved in other spaces.
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise PhotoError(
            source, f"colour mode {image.mode} cannot be converted to RGB ({error})"
        ) from None


def _photo_from_array(array: np.ndarray) -> Image.Image:
    """Return an RGB image copied from an ``(h, w, 3)`` or ``(h, w)`` uint8 array."""
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)
    if array.dtype != np.uint8 or not shape_ok:
        raise PhotoError(
            array,
            f"an array photo must be (h, w, 3) uint8 RGB or (h, w) uint8 grey, "
            f"got shape {array.shape} dtype {array.dtype}; convert it first",
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise PhotoError(array, "the array has no pixels")

    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _too_large_reason(size: tuple[int, int] | None) -> str:
    limit = f"the limit of MAX_PIXELS = {MAX_PIXELS:,} pixels"
    if size is None:
        declared = "its header declares a size"
    else:
        width, height = size
        declared = f"its header declares {width} x {height} = {width * height:,} pixels"
    return (
        f"{declared}, more than {limit}; it was not decoded. Shrink the photo "
        f"first if it is genuine"
    )


def _declared_size(path: Path) -> tuple[int, int] | None:
    """Return the width and height a file's header declares, or None.

    Pillow's ``Image.open`` refuses very large images before returning them,
    so their size cannot be read from it; this asks each registered format
    reader, as ``Image.open`` does, but without the size check. Only the header
    is read.
    """
    Image.init()
    with path.open("rb") as handle:
        prefix = handle.read(16)
        for factory, accepts in Image.OPEN.values():
            try:
                accepted = accepts(prefix) if accepts is not None else True
                if isinstance(accepted, str) or not accepted:
                    continue
                handle.seek(0)
                return factory(handle, str(path)).size
            except (*_DECODE_ERRORS, TypeError):
                continue
    return None


def _describe(source: object) -> str:
    """Name a photo source for a message: its path, or what the object is."""
    if isinstance(source, np.ndarray):
        return f"<array of shape {source.shape} dtype {source.dtype}>"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        if filename:
            return str(filename)
        return f"<{source.mode} image {source.width}x{source.height}>"
    return str(source)
