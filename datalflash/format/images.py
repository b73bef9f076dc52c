"""Encoded images in a store: what an ``image`` field holds and how its values are made.

An ``image`` field keeps each image encoded (JPEG, PNG, or any format Pillow reads), as a
``bytes`` field does, beside an int32 ``(height, width, channels)`` row per image in a fixed-shape
field named by the structure (see :mod:`datalflash.format.structure`), so crops can be planned
without decoding. An image read from a file is stored as the file's bytes, verbatim
(:class:`EncodedImage`); a decoded image (a ``PIL.Image``) is encoded at conversion, as PNG
(lossless) by default or as JPEG at a chosen quality (:data:`ENCODINGS`).

Pillow is needed only where images are: it is imported on first use, with an error saying how to
install it when it is missing.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from datalflash.errors import ImageError

ENCODINGS = ("png", "jpeg")
"""How decoded images are encoded at conversion: ``"png"`` (lossless, the default) or
``"jpeg"`` (written ``"jpeg:<quality>"``, quality 1-100, 90 when not given)."""
SIZE_SUFFIX = ".size"
"""The size field of image field ``f`` is ``f + SIZE_SUFFIX`` (a name no sample key can take)."""
MODES_CHANNELS = {"1": 1, "L": 1, "P": 3, "RGB": 3, "RGBA": 4, "CMYK": 3, "YCbCr": 3, "LA": 2, "I;16": 1, "I": 1}


def pillow() -> ModuleType:
    """``PIL.Image``, or ImportError saying how to install Pillow."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("image fields need Pillow: pip install 'datalflash[images]' (or pip install pillow)") from e
    return Image


def is_pil_image(value: Any) -> bool:
    """Whether ``value`` is a ``PIL.Image.Image`` (without importing Pillow when it is not)."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(value, module.Image)


def is_image(value: Any) -> bool:
    """Whether a sample's leaf is an image: an :class:`EncodedImage` or a ``PIL.Image``."""
    return isinstance(value, EncodedImage) or is_pil_image(value)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
"""Channels of a PNG's colour type, as Pillow's mode for it counts them (palette: RGB)."""


@functools.cache
def simplejpeg_module() -> ModuleType | None:
    """``simplejpeg`` (libjpeg-turbo: the pixels Pillow gives, with less overhead), or None
    where it is not installed."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def header_size(data: bytes) -> tuple[int, int, int] | None:
    """``(height, width, channels)`` of a PNG (its IHDR chunk, CRC checked) or a JPEG (by
    simplejpeg, when installed) as Pillow reports them, read in C rather than by Pillow's parser
    in Python (~15x faster); None for other formats or headers these refuse (Pillow then reads
    or refuses them)."""
    if data[:8] == PNG_SIGNATURE:
        if len(data) < 33 or data[12:16] != b"IHDR" or zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
            return None
        width, height, _, colour = struct.unpack(">IIBB", data[16:26])
        return (height, width, PNG_CHANNELS[colour]) if colour in PNG_CHANNELS and width and height else None
    simplejpeg = simplejpeg_module()
    if data[:3] != b"\xff\xd8\xff" or simplejpeg is None:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (height, width, 1 if colorspace == "Gray" else 3) if width and height else None


@dataclass(frozen=True)
class EncodedImage:
    """An image's encoded bytes (a file's content, stored verbatim) and its size from the header.

    ``where`` names the image in errors (its file)."""

    data: bytes
    height: int
    width: int
    channels: int
    where: str = ""

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "") -> EncodedImage:
        """The image encoded in ``data``, its header read (not the pixels); ImageError naming
        ``where`` if Pillow cannot identify it."""
        size = header_size(data)
        if size is not None:
            return cls(bytes(data), *size, where)
        image = pillow()
        try:
            with image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                channels = MODES_CHANNELS.get(opened.mode, len(opened.getbands()))
        except Exception as e:
            raise ImageError(f"{where or 'image'}: not a readable image ({type(e).__name__}: {e})") from None
        return cls(bytes(data), height, width, channels, where)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> EncodedImage:
        """The image in the file at ``path`` (its bytes, verbatim); ImageError naming the file
        when it cannot be read or is not an image."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageError(f"{path}: cannot read the image file ({type(e).__name__}: {e})") from None
        return cls.from_bytes(data, str(path))


def image_size(value: Any) -> np.ndarray:
    """``(height, width, channels)`` of an image leaf as int32 (decoded channels: palette and
    CMYK images decode to RGB)."""
    if isinstance(value, EncodedImage):
        return np.array([value.height, value.width, value.channels], dtype=np.int32)
    width, height = value.size
    return np.array([height, width, MODES_CHANNELS.get(value.mode, len(value.getbands()))], dtype=np.int32)


def parse_encoding(encoding: str, field: str = "") -> tuple[str, int]:
    """``(format, quality)`` of an encoding name (see :data:`ENCODINGS`); ValueError if unknown."""
    name, _, quality = encoding.partition(":")
    if name not in ENCODINGS or (quality and not (quality.isdigit() and 1 <= int(quality) <= 100)):
        raise ValueError(
            f"field {field!r}: image encoding {encoding!r} is not one of 'png', 'jpeg' or 'jpeg:<quality 1-100>'"
        )
    return name, int(quality or 90)


def encoded(value: Any, encoding: str = "png") -> bytes:
    """The stored bytes of an image leaf: an :class:`EncodedImage`'s own, a ``PIL.Image``
    encoded as ``encoding`` says."""
    if isinstance(value, EncodedImage):
        return value.data
    name, quality = parse_encoding(encoding)
    out = io.BytesIO()
    image = value
    if name == "jpeg" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    image.save(out, format=name.upper(), **({"quality": quality} if name == "jpeg" else {}))
    return out.getvalue()


def decoded_pixels(value: Any) -> np.ndarray:
    """An image leaf decoded to RGB ``(height, width, 3)`` uint8: the raw form of an image field
    (``fields={name: "ragged"}``)."""
    image = pillow()
    if isinstance(value, EncodedImage):
        try:
            value = image.open(io.BytesIO(value.data))
            value.load()
        except Exception as e:
            raise ImageError(f"{value.where or 'image'}: cannot decode ({type(e).__name__}: {e})") from None
    return np.asarray(value if value.mode == "RGB" else value.convert("RGB"), dtype=np.uint8)


def pil_image(data: bytes) -> Any:
    """The image encoded in ``data`` as an RGB ``PIL.Image`` (as torchvision's ``ImageFolder``
    gives its samples), decoded now."""
    image = pillow()
    try:
        with image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGB")
    except Exception as e:
        raise ImageError(f"cannot decode an image of {len(data)} bytes ({type(e).__name__}: {e})") from None
