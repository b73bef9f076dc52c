"""Image batches: encoded images decoded, cropped and resized in one step per image.

An ``image`` field's rows reach a batch encoded. :class:`ImageDecode` says how they become a
tensor: each image is decoded (a JPEG by simplejpeg when installed, else by Pillow: the same
libjpeg-turbo pixels; at a reduced scale, 1/2 to 1/8, when the crop is that much larger than the
output), and only its crop is resized, by torch's uint8 antialiased bilinear kernel (~3x faster
than Pillow's), into one ``(batch, 3, height, width)`` uint8 buffer, handed out as NCHW or as
NHWC (a view). Crops are planned for the whole batch at once
(:func:`plan_crops`) from each image's stored size, with random numbers that are a function of
``(seed, epoch, sample index)`` alone, so a resumed or re-sharded run crops every sample as an
uninterrupted one would.

Decoding a batch is split over threads by the loader (the decoders and torch release the GIL);
:func:`decode_rows` is the work of one thread. With ``device="cuda"`` and torchvision installed,
JPEGs are decoded on the GPU instead (:func:`decode_on_gpu`).
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from datalflash.errors import ImageError
from datalflash.format.images import pillow, simplejpeg_module

CROPS = ("random", "center", "full")
LAYOUTS = ("NCHW", "NHWC")
ATTEMPTS = 10  # random-resized-crop tries before the fallback (as torchvision's RandomResizedCrop)


@dataclass(frozen=True)
class ImageDecode:
    """How an image field is batched (pass it in the loader's ``collate=`` for the field, or
    give the loader ``image_size=``).

    * ``size``: output ``height`` (and ``width``: an int is square); None: each image decoded at
      its own size, the batch a list of ``(3, H, W)`` uint8 tensors.
    * ``crop``: ``"random"`` (random-resized crop: a region of ``scale`` of the area and
      ``ratio`` of aspect, as torchvision's ``RandomResizedCrop``), ``"center"`` (the largest
      centered region of the output's aspect, times ``center_fraction``: 0.875 is
      ``Resize(256) + CenterCrop(224)``) or ``"full"`` (the whole image, stretched).
    * ``layout``: ``"NCHW"`` or ``"NHWC"`` (a channels-last view of the NCHW buffer).
    * ``dtype``: ``torch.uint8``, or a float dtype for values in ``[0, 1]`` (better done on the
      device, after the transfer: the copy is then 4x smaller).
    * ``processes``: decoding worker processes (0: threads in this process instead; None: one per
      core where there are more than 4, else threads: threads stopped scaling on 16 cores).
    * ``threads``: decoding threads, when decoding in this process (None: one per core).
    * ``gpu``: decode JPEGs on the GPU when the loader's device is CUDA and torchvision is
      installed (None: whenever possible).
    """

    size: int | tuple[int, int] | None = None
    crop: str = "center"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    center_fraction: float = 0.875
    layout: str = "NCHW"
    dtype: torch.dtype = torch.uint8
    threads: int | None = None
    gpu: bool | None = None
    processes: int | None = None

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"ImageDecode crop {self.crop!r} is not one of {list(CROPS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"ImageDecode layout {self.layout!r} is not one of {list(LAYOUTS)}")
        if self.size is not None:
            sizes = (self.size,) if isinstance(self.size, int) else tuple(self.size)
            if len(sizes) not in (1, 2) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
            ):
                raise ValueError(f"ImageDecode size {self.size!r} is not a positive int or (height, width)")
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"ImageDecode scale {self.scale!r} must be (low, high) with 0 < low <= high <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ImageDecode ratio {self.ratio!r} must be (low, high) with 0 < low <= high")
        if not 0 < self.center_fraction <= 1:
            raise ValueError(f"ImageDecode center_fraction {self.center_fraction!r} must be in (0, 1]")
        for name in ("threads", "processes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"ImageDecode {name}={value!r} is not a non-negative int")
        if self.dtype != torch.uint8 and not self.dtype.is_floating_point:
            raise ValueError(f"ImageDecode dtype {self.dtype} is not uint8 or a float dtype")

    @property
    def output_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of the output, or None (each image its own size)."""
        if self.size is None:
            return None
        return (self.size, self.size) if isinstance(self.size, int) else (self.size[0], self.size[1])


# ----------------------------------------------------------------------------- random numbers
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: Any) -> Any:
    """SplitMix64's finalizer: a bijection of uint64 that scatters nearby inputs."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_uniforms(seed: int, epoch: int, indices: np.ndarray, count: int) -> np.ndarray:
    """``(len(indices), count)`` floats in ``[0, 1)``, a function of ``(seed, epoch, index)``
    alone (counter-based: no generator state to save or share)."""
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed % 2**64) + _GOLDEN * np.uint64((epoch + 1) % 2**64))
        base = _mix(key ^ (np.asarray(indices, dtype=np.int64).astype(np.uint64) * _GOLDEN))
        counters = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
        bits = _mix(base[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


# ----------------------------------------------------------------------------- crop planning
def plan_crops(
    heights: np.ndarray, widths: np.ndarray, decode: ImageDecode, uniforms: np.ndarray | None = None
) -> np.ndarray:
    """``(n, 4)`` float64 boxes ``(left, top, right, bottom)`` in pixels of each image, for all
    images at once; ``uniforms`` (from :func:`sample_uniforms`, ``2 * ATTEMPTS + 2`` per image)
    drive a random crop."""
    h, w = np.asarray(heights, np.float64), np.asarray(widths, np.float64)
    n = len(h)
    if decode.crop == "full" or decode.output_size is None:
        return np.stack([np.zeros(n), np.zeros(n), w, h], axis=1)
    out_h, out_w = decode.output_size
    if decode.crop == "center":
        wide = out_w / out_h
        side_w = np.minimum(w, h * wide) * decode.center_fraction
        side_h = np.minimum(h, w / wide) * decode.center_fraction
        return np.stack([(w - side_w) / 2, (h - side_h) / 2, (w + side_w) / 2, (h + side_h) / 2], axis=1)
    if uniforms is None:
        raise ValueError("a random crop needs uniforms")
    area: np.ndarray = (h * w)[:, None]
    u_scale, u_ratio = uniforms[:, 0:ATTEMPTS], uniforms[:, ATTEMPTS : 2 * ATTEMPTS]
    log_low, log_high = math.log(decode.ratio[0]), math.log(decode.ratio[1])
    target: np.ndarray = area * (decode.scale[0] + (decode.scale[1] - decode.scale[0]) * u_scale)
    aspect: np.ndarray = np.exp(log_low + (log_high - log_low) * u_ratio)
    cw, ch = np.round(np.sqrt(target * aspect)), np.round(np.sqrt(target / aspect))
    fits = (cw > 0) & (ch > 0) & (cw <= w[:, None]) & (ch <= h[:, None])
    first = np.argmax(fits, axis=1)
    rows = np.arange(n)
    found = fits[rows, first]
    cw, ch = cw[rows, first], ch[rows, first]
    # fallback (no attempt fitted): the whole image, cut to the nearest allowed aspect, centered
    in_ratio = w / np.maximum(h, 1)
    fw = np.where(in_ratio < decode.ratio[0], w, np.where(in_ratio > decode.ratio[1], np.round(h * decode.ratio[1]), w))
    fh = np.where(in_ratio < decode.ratio[0], np.round(w / decode.ratio[0]), h)
    cw, ch = np.where(found, cw, fw), np.where(found, ch, fh)
    left = np.where(found, np.floor(uniforms[:, -2] * (w - cw + 1)), (w - cw) // 2)
    top = np.where(found, np.floor(uniforms[:, -1] * (h - ch + 1)), (h - ch) // 2)
    return np.stack([left, top, left + cw, top + ch], axis=1)


# ----------------------------------------------------------------------------- decoding
SIMPLEJPEG: Any = simplejpeg_module()


_SCRATCH = threading.local()  # each decoding thread's reused output buffer (no page faults per image)


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's scratch buffer, at least ``nbytes`` long (its contents are the caller's until
    the thread's next call)."""
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or len(buffer) < nbytes:
        buffer = _SCRATCH.buffer = np.empty(max(nbytes, 2 * (0 if buffer is None else len(buffer))), np.uint8)
    return buffer


def _jpeg_header(data: Any) -> tuple[int, int] | None:
    """``(height, width)`` of a JPEG simplejpeg decodes to Pillow's pixels (YCbCr or gray), or
    None: not a JPEG, no simplejpeg, a CMYK/YCCK JPEG (whose RGB Pillow computes otherwise), or a
    header simplejpeg cannot read (Pillow then decodes it, or names what is wrong)."""
    if SIMPLEJPEG is None or not is_jpeg(data):
        return None
    try:
        height, width, colorspace, _ = SIMPLEJPEG.decode_jpeg_header(data)
    except ValueError:
        return None
    return (height, width) if colorspace in ("YCbCr", "Gray") else None


def _decoded(data: Any, region: tuple[float, float] | None, scratch: bool = False) -> tuple[np.ndarray, float, float]:
    """``(RGB pixels (H, W, 3), x scale, y scale)`` of an encoded image: a JPEG whose ``region``
    (the crop's size over the output's, when given) is at least 2 decoded at a reduced scale
    (1/2 to 1/8, by libjpeg-turbo's DCT scaling); the scales map full-size coordinates to it.
    ``scratch``: a JPEG's pixels may be in this thread's scratch buffer (valid until its next call)."""
    header = _jpeg_header(data)
    if header is not None:
        height, width = header
        reduce = min(region) if region is not None else 1.0
        buffer = _scratch(height * width * 3) if scratch else None
        if reduce >= 2:
            pixels = SIMPLEJPEG.decode_jpeg(
                data,
                "RGB",
                min_width=math.ceil(width / reduce),
                min_height=math.ceil(height / reduce),
                buffer=buffer,
            )
        else:
            pixels = SIMPLEJPEG.decode_jpeg(data, "RGB", buffer=buffer)
        return pixels, pixels.shape[1] / width, pixels.shape[0] / height
    opened = pillow().open(io.BytesIO(data))
    width, height = opened.size
    if opened.format == "JPEG" and region is not None and min(region) >= 2:
        opened.draft("RGB", (math.ceil(width / min(region)), math.ceil(height / min(region))))
    pixels = np.array(opened if opened.mode == "RGB" else opened.convert("RGB"))
    return pixels, pixels.shape[1] / width, pixels.shape[0] / height


def decode_pixels(data: Any) -> np.ndarray:
    """One image decoded whole, as RGB uint8 ``(H, W, 3)``."""
    return _decoded(data, None)[0]


def decode_image(data: Any, box: Sequence[float], size: tuple[int, int]) -> torch.Tensor:
    """One image decoded to RGB uint8 ``(3, H, W)``: the ``box`` region (``left, top, right,
    bottom`` in full-size pixels, rounded to whole pixels) resized to ``size`` (``(height,
    width)``, bilinear with antialiasing, torch's uint8 kernel). JPEGs are decoded by simplejpeg
    when it is installed, else by Pillow (the same pixels), at a reduced scale when the region is
    at least twice the output."""
    out_h, out_w = size
    left, top, right, bottom = (float(v) for v in box)
    region = ((right - left) / out_w, (bottom - top) / out_h)
    pixels, fx, fy = _decoded(data, region, scratch=True)
    height, width = pixels.shape[:2]
    x0, x1 = _span(left * fx, right * fx, width)
    y0, y1 = _span(top * fy, bottom * fy, height)
    crop = torch.from_numpy(pixels[y0:y1, x0:x1]).permute(2, 0, 1).unsqueeze(0)
    resized = torch.nn.functional.interpolate(crop, size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized[0]


def _span(low: float, high: float, limit: int) -> tuple[int, int]:
    """Whole pixels ``[a, b)`` of ``[low, high)`` within ``[0, limit)``, at least one."""
    a = min(max(round(low), 0), limit - 1)
    return a, max(a + 1, min(round(min(high, limit)), limit))


@contextlib.contextmanager
def _naming(name: str) -> Iterator[None]:
    """Any error decoding the image ``name`` raised as an ImageError naming it."""
    try:
        yield
    except Exception as e:
        raise ImageError(f"{name}: cannot decode the image ({type(e).__name__}: {e})") from None


def decode_rows(
    rows: Sequence[Any], boxes: np.ndarray, size: tuple[int, int], out: np.ndarray, names: Sequence[str]
) -> None:
    """Decode encoded ``rows`` (uint8 tensors or arrays) into ``out[i]`` (``(3, H, W)`` uint8
    each: the planar layout torch's resize writes, so each copy is one memcpy), the ``boxes``
    regions resized to ``size``; an ImageError names the image (``names[i]``)."""
    for i, row in enumerate(rows):
        with _naming(names[i]):
            out[i] = decode_image(np.asarray(row), boxes[i], size).numpy()  # (numpy's copy: no torch threads)


def decode_part(
    encoded: torch.Tensor,
    out: torch.Tensor,
    offsets: np.ndarray,
    boxes: np.ndarray,
    size: tuple[int, int],
    names: Sequence[str],
    rows: range,
) -> None:
    """In a decoding worker process: decode ``rows`` of a batch whose encoded images lie one after
    the other in the shared ``encoded`` (``offsets``) into the shared ``out``, ``(batch, 3, H, W)``
    uint8 from its start, as :func:`decode_rows` does."""
    data = encoded.numpy()
    n = len(offsets) - 1
    pixels = out.numpy()[: n * 3 * size[0] * size[1]].reshape(n, 3, *size)
    part = slice(rows.start, rows.stop)
    encoded_rows = [data[offsets[i] : offsets[i + 1]] for i in rows]
    decode_rows(encoded_rows, boxes[part], size, pixels[part], names[part])


def decode_full(rows: Sequence[torch.Tensor], names: Sequence[str]) -> list[torch.Tensor]:
    """Each encoded row decoded at its own size, as a ``(3, H, W)`` uint8 tensor."""
    images = []
    for i, row in enumerate(rows):
        with _naming(names[i]):
            pixels = decode_pixels(row.numpy())
        images.append(torch.from_numpy(pixels).permute(2, 0, 1))
    return images


def finish(pixels: torch.Tensor, decode: ImageDecode) -> torch.Tensor:
    """An NCHW uint8 batch in the layout and dtype ``decode`` asks for (NHWC: a view)."""
    if decode.dtype != torch.uint8:
        pixels = pixels.to(decode.dtype).div_(255)
    return pixels.permute(0, 2, 3, 1) if decode.layout == "NHWC" else pixels


def is_jpeg(data: Any) -> bool:
    """Whether an encoded image (bytes, a uint8 array or tensor) starts as a JPEG does."""
    head = data[:2]
    return len(data) > 3 and bytes(head.numpy() if isinstance(head, torch.Tensor) else head) == b"\xff\xd8"


def decode_on_gpu(
    rows: Sequence[torch.Tensor], boxes: np.ndarray, size: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """JPEG ``rows`` decoded on the GPU (torchvision's nvJPEG decoder), each ``box`` region
    resized to ``size`` (bilinear, antialiased): an NCHW uint8 batch on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded = decode_jpeg(list(rows), mode=ImageReadMode.RGB, device=device)
    out = torch.empty((len(rows), 3, *size), dtype=torch.uint8, device=device)
    for i, image in enumerate(decoded):
        left, top, right, bottom = (round(float(v)) for v in boxes[i])
        region = image[:, top:bottom, left:right].unsqueeze(0).float()
        resized = torch.nn.functional.interpolate(
            region, size=size, mode="bilinear", antialias=True, align_corners=False
        )
        out[i] = resized[0].round_().clamp_(0, 255).to(torch.uint8)
    return out
