"""sensor_msgs Image/CompressedImage <-> numpy, without cv_bridge and without rclpy.

Works on any object with the message's fields (rclpy messages, ``rosbags`` messages, test stubs).
Raw images are decoded as zero-copy numpy views of ``msg.data`` wherever the encoding allows
(``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8``, ``mono16``); ``step`` (row padding) and
``is_bigendian`` are honoured. Everything that cannot be decoded raises ``ValueError`` with a
message that says what was found and what was expected, so a node can count, log and report it.

Channel order: ``image_to_rgb``/``compressed_to_rgb`` always return RGB. The ``*_for_model``
functions return ``(pixels, channel_order)`` with ``channel_order`` in ``{'RGB', 'BGR'}`` so that
``bgr8`` cameras and JPEGs reach the Segmenter without a colour-swap copy.
"""

from __future__ import annotations

import array
import struct
import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "COMPRESSED_FORMATS",
    "SUPPORTED_ENCODINGS",
    "ImageLayout",
    "check_image_header",
    "check_model_header",
    "compressed_for_model",
    "compressed_to_rgb",
    "confidence_to_image_fields",
    "fill_fields",
    "fill_image",
    "image_for_model",
    "image_to_numpy",
    "image_to_rgb",
    "mask_to_image_fields",
    "mask_to_png",
    "numpy_to_image_fields",
]


@dataclass(frozen=True)
class _Encoding:
    channels: int
    itemsize: int  # bytes per channel value
    order: str  # RGB | BGR | GRAY | RAW (no colour meaning) | cv2 (needs cvtColor)
    cv2_code: int | None = None  # colour conversion to RGB, for Bayer and YUV
    kind: str = "u"  # numpy kind of a channel value: unsigned int or float


# OpenCV names Bayer patterns by the second row; these codes are the ones cv_bridge uses, and
# test_ros_conversions checks them on hand-made mosaics.
_ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, 1, "RGB"),
    "bgr8": _Encoding(3, 1, "BGR"),
    "rgba8": _Encoding(4, 1, "RGB"),
    "bgra8": _Encoding(4, 1, "BGR"),
    "mono8": _Encoding(1, 1, "GRAY"),
    "mono16": _Encoding(1, 2, "GRAY"),
    "8UC1": _Encoding(1, 1, "RAW"),
    "8UC3": _Encoding(3, 1, "RAW"),
    "16UC1": _Encoding(1, 2, "RAW"),
    "32FC1": _Encoding(1, 4, "RAW", kind="f"),
    "bayer_rggb8": _Encoding(1, 1, "cv2", cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": _Encoding(1, 1, "cv2", cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": _Encoding(1, 1, "cv2", cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": _Encoding(1, 1, "cv2", cv2.COLOR_BayerGB2RGB),
    # ROS 'yuv422' is UYVY (U Y0 V Y1); 'yuv422_yuy2' is YUYV. 'uyvy'/'yuyv' are the newer names.
    "yuv422": _Encoding(2, 1, "cv2", cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": _Encoding(2, 1, "cv2", cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": _Encoding(2, 1, "cv2", cv2.COLOR_YUV2RGB_YUYV),
    "yuyv": _Encoding(2, 1, "cv2", cv2.COLOR_YUV2RGB_YUYV),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)
# Encodings that image_to_rgb / image_for_model accept (the RAW ones have no colour meaning
# except 8UC1, read as grey like cv_bridge does).
_COLOUR_ENCODINGS = tuple(k for k, v in _ENCODINGS.items() if v.order != "RAW") + ("8UC1",)
COMPRESSED_FORMATS = ("jpeg", "png")

_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_NATIVE_BIG_ENDIAN = sys.byteorder == "big"


@dataclass(frozen=True)
class ImageLayout:
    """What a validated Image header says about its pixel buffer."""

    height: int
    width: int
    encoding: str
    channels: int
    itemsize: int
    step: int
    big_endian: bool


def check_image_size(width: int, height: int, max_pixels: int | None = None,
                     codec: str = "") -> None:
    """ValueError for an empty image or one over ``max_pixels`` (parameter max_input_pixels);
    ``codec`` ('jpeg', 'png') names a compressed image in the message."""
    if height <= 0 or width <= 0:
        raise ValueError(f"empty {codec + ' ' if codec else ''}image "
                         f"({width}x{height}, width x height)")
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(
            f"image too large: {codec + ' of ' if codec else ''}{width}x{height} = "
            f"{height * width} pixels exceeds the limit of {max_pixels} pixels "
            "(parameter max_input_pixels)"
        )


# -- raw Image -> numpy -----------------------------------------------------------------------
def check_image_header(msg: Any, max_pixels: int | None = None) -> ImageLayout:
    """Validate an Image's header fields against its data length; O(1), no pixel is touched.

    Raises ValueError for an unsupported encoding, an empty (0xN) image, an image over
    ``max_pixels``, a ``step`` that cannot hold a row, and data that is shorter (truncated)
    or longer than ``step * height``.
    """
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    encoding = str(msg.encoding)
    spec = _ENCODINGS.get(encoding)
    if spec is None:
        raise ValueError(
            f"unsupported encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    check_image_size(width, height, max_pixels)
    row_bytes = width * spec.channels * spec.itemsize
    if encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv") and width % 2:
        raise ValueError(f"{encoding} needs an even width, got {width}")
    if step < row_bytes:
        raise ValueError(
            f"step mismatch: step {step} is smaller than one row of {width} {encoding} pixels "
            f"({row_bytes} bytes)"
        )
    if step % spec.itemsize:
        raise ValueError(f"step mismatch: step {step} is not a multiple of {spec.itemsize}")
    expected = step * height
    size = _data_size(msg.data)
    if size < expected:
        raise ValueError(
            f"truncated data: {size} bytes, expected step x height = {step} x {height} = "
            f"{expected} bytes"
        )
    if size > expected:
        raise ValueError(
            f"data has {size - expected} extra bytes: {size} bytes, expected step x height = "
            f"{step} x {height} = {expected} (wrong step or height?)"
        )
    return ImageLayout(
        height, width, encoding, spec.channels, spec.itemsize, step, bool(msg.is_bigendian)
    )


def check_model_header(msg: Any, max_pixels: int | None = None) -> ImageLayout:
    """:func:`check_image_header`, and the encoding must have a colour meaning (the network
    takes colour images): what a node can check in its callback before any pixel work."""
    encoding = str(msg.encoding)
    if encoding in _ENCODINGS and encoding not in _COLOUR_ENCODINGS:
        raise ValueError(
            f"encoding {encoding!r} has no channel order; publish one of "
            f"{', '.join(_COLOUR_ENCODINGS)}"
        )
    return check_image_header(msg, max_pixels)


def image_to_numpy(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """Image message -> numpy array in the message's own layout, as a view of ``msg.data``.

    (H, W) for single-channel encodings (Bayer mosaics included), (H, W, C) otherwise
    (C = 2 for YUV 4:2:2, raw byte pairs). 16- and 32-bit data keep the message's byte order
    in the dtype (``>u2``, ``<f4``, ...), so values read correctly without a copy.
    """
    layout = check_image_header(msg, max_pixels)
    buffer = _byte_view(msg.data)
    kind = _ENCODINGS[layout.encoding].kind
    byte_order = (">" if layout.big_endian else "<") if layout.itemsize > 1 else "|"
    dtype = np.dtype(f"{byte_order}{kind}{layout.itemsize}")
    pixel_bytes = layout.channels * layout.itemsize
    if layout.channels == 1:
        shape: tuple[int, ...] = (layout.height, layout.width)
        strides: tuple[int, ...] = (layout.step, pixel_bytes)
    else:
        shape = (layout.height, layout.width, layout.channels)
        strides = (layout.step, pixel_bytes, layout.itemsize)
    return np.ndarray(shape, dtype=dtype, buffer=buffer, strides=strides)


def image_for_model(msg: Any, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """Image message -> (uint8 (H, W, 3) pixels, 'RGB' or 'BGR'), zero-copy where possible.

    rgb8/bgr8 (and rgba8/bgra8, alpha dropped) stay views of the message buffer; grey, 16-bit,
    Bayer and YUV encodings are converted to RGB (one copy). mono16 keeps its 8 high bits.
    """
    check_model_header(msg, max_pixels)
    raw = image_to_numpy(msg, max_pixels)
    spec = _ENCODINGS[str(msg.encoding)]
    if spec.order in ("RGB", "BGR"):
        return (raw[..., :3] if spec.channels == 4 else raw), spec.order
    if spec.order == "cv2":
        return cv2.cvtColor(np.ascontiguousarray(raw), spec.cv2_code), "RGB"
    if raw.dtype != np.uint8:  # mono16: keep the high byte (full 16-bit range -> 0..255)
        raw = (raw >> 8).astype(np.uint8)
    return np.repeat(raw[:, :, None], 3, axis=2), "RGB"


def image_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """Image message -> RGB uint8 (H, W, 3) (a view for rgb8/rgba8, else a new array)."""
    pixels, order = image_for_model(msg, max_pixels)
    return np.ascontiguousarray(pixels[..., ::-1]) if order == "BGR" else pixels


# -- CompressedImage -> numpy -----------------------------------------------------------------
def compressed_for_model(msg: Any, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """CompressedImage (JPEG or PNG) -> (uint8 (H, W, 3) pixels, 'RGB' or 'BGR').

    The channel order follows image_transport's ``format`` string: ``"rgb8; jpeg compressed
    bgr8"`` or a bare ``"jpeg"`` decode to BGR, ``"... compressed rgb8"`` to RGB. Raises
    ValueError for empty, truncated or corrupt data, for depth formats and for other codecs.
    """
    fmt = str(msg.format)
    data = _byte_view(msg.data)
    codec = _sniff_codec(data, fmt)
    size = _encoded_size(data, codec)
    if size is not None:
        check_image_size(*size, max_pixels, codec)
    pixels = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if pixels is None:
        raise ValueError(f"corrupt {codec} data: OpenCV could not decode {data.size} bytes")
    order = "RGB" if "compressed rgb" in fmt.lower() else "BGR"
    return pixels, order


def compressed_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """CompressedImage (JPEG or PNG) -> RGB uint8 (H, W, 3)."""
    pixels, order = compressed_for_model(msg, max_pixels)
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB) if order == "BGR" else pixels


def _sniff_codec(data: np.ndarray, fmt: str) -> str:
    """The codec of ``data`` from its magic bytes; errors name the declared format."""
    lowered = fmt.lower()
    if "compresseddepth" in lowered:
        raise ValueError(f"unsupported CompressedImage format {fmt!r} (depth images)")
    if data.size == 0:
        raise ValueError(f"empty CompressedImage data (format {fmt!r})")
    head = data[:8].tobytes()
    if head.startswith(_JPEG_MAGIC):
        tail = data[-64:].tobytes().rstrip(b"\0")
        if not tail.endswith(_JPEG_EOI):
            raise ValueError(
                f"corrupt jpeg data: truncated ({data.size} bytes, no end-of-image marker)"
            )
        return "jpeg"
    if head.startswith(_PNG_MAGIC):
        if not data[-12:].tobytes().endswith(_PNG_IEND):
            raise ValueError(f"corrupt png data: truncated ({data.size} bytes, no IEND chunk)")
        return "png"
    declared = next((c for c in ("jpeg", "jpg", "png") if c in lowered), None)
    if declared:
        raise ValueError(
            f"corrupt {declared} data: format says {fmt!r} but the data starts with "
            f"{head[:4].hex()} (not a JPEG/PNG signature)"
        )
    raise ValueError(
        f"unsupported CompressedImage format {fmt!r}; supported: {', '.join(COMPRESSED_FORMATS)}"
    )


def _encoded_size(data: np.ndarray, codec: str) -> tuple[int, int] | None:
    """(width, height) from the PNG IHDR or the JPEG SOF marker, read before decoding so that
    a tiny file that claims a huge image is refused without allocating it."""
    raw = data[: 1 << 16].tobytes()
    if codec == "png":
        if len(raw) < 24 or raw[12:16] != b"IHDR":
            raise ValueError("corrupt png data: no IHDR chunk")
        width, height = struct.unpack(">II", raw[16:24])
        return width, height
    pos = 2
    while pos + 9 < len(raw):
        if raw[pos] != 0xFF:
            raise ValueError(f"corrupt jpeg data: bad marker at byte {pos}")
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack(">H", raw[pos + 2 : pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", raw[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None  # header longer than we read: let the decoder judge


# -- numpy -> Image fields --------------------------------------------------------------------
_OUTPUT_ENCODINGS: dict[str, tuple[int, np.dtype]] = {
    "mono8": (1, np.dtype(np.uint8)),
    "8UC1": (1, np.dtype(np.uint8)),
    "mono16": (1, np.dtype(np.uint16)),
    "16UC1": (1, np.dtype(np.uint16)),
    "rgb8": (3, np.dtype(np.uint8)),
    "bgr8": (3, np.dtype(np.uint8)),
    "8UC3": (3, np.dtype(np.uint8)),
    "rgba8": (4, np.dtype(np.uint8)),
    "bgra8": (4, np.dtype(np.uint8)),
    "32FC1": (1, np.dtype(np.float32)),
}


def numpy_to_image_fields(
    pixels: np.ndarray, encoding: str, out: array.array | None = None
) -> dict[str, Any]:
    """numpy array -> the Image fields (height, width, encoding, is_bigendian, step, data).

    ``data`` is an ``array.array('B')`` filled with one memcpy: what rclpy stores without a
    per-element check (assigning a numpy array to ``msg.data`` costs ~0.8 s for 6 MB). Pass
    ``out`` (an ``array.array('B')`` of the image's byte size, e.g. the previous frame's) to fill
    it instead of allocating. Set the fields with :func:`fill_image` on a message made with
    ``check_fields=True``: ``Image(data=...)`` copies the array again, and so does the ``data``
    setter of a message without field checks (rosidl's default).
    """
    if encoding not in _OUTPUT_ENCODINGS:
        raise ValueError(
            f"cannot write encoding {encoding!r}; supported: {', '.join(_OUTPUT_ENCODINGS)}"
        )
    channels, dtype = _OUTPUT_ENCODINGS[encoding]
    expected_ndim = 2 if channels == 1 else 3
    if (
        pixels.ndim != expected_ndim
        or (channels > 1 and pixels.shape[2] != channels)
        or pixels.dtype.kind != dtype.kind
        or pixels.dtype.itemsize != dtype.itemsize
    ):
        shape = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise ValueError(
            f"{encoding} needs a {dtype.name} array of shape {shape}, "
            f"got {pixels.dtype} {pixels.shape}"
        )
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"cannot write an empty image of shape {pixels.shape}")
    pixels = np.ascontiguousarray(pixels)
    big_endian = pixels.dtype.byteorder == ">" or (
        pixels.dtype.byteorder == "=" and _NATIVE_BIG_ENDIAN and pixels.dtype.itemsize > 1
    )
    flat = pixels.reshape(-1).view(np.uint8)
    if out is not None and out.typecode == "B" and len(out) == flat.size:
        data = out
        np.frombuffer(data, np.uint8)[:] = flat
    else:
        data = array.array("B")
        data.frombytes(flat)
    height, width = pixels.shape[:2]
    return {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": int(big_endian),
        "step": int(width * channels * dtype.itemsize),
        "data": data,
    }


def fill_image(msg: Any, pixels: np.ndarray, encoding: str,
               out: array.array | None = None) -> Any:
    """Set the pixel fields of an Image message (header untouched) from ``pixels`` (into
    ``out`` when it fits, see :func:`numpy_to_image_fields`); returns it. For a message made with
    ``check_fields=True`` rosidl's setter keeps the array as it is, so this is the one copy of the
    pixels before publishing."""
    return fill_fields(msg, numpy_to_image_fields(pixels, encoding, out))


def fill_fields(msg: Any, fields: dict[str, Any]) -> Any:
    """Set ``fields`` (e.g. :func:`numpy_to_image_fields`'s) on ``msg`` one attribute at a time
    (no copy of ``data``, unlike the message constructor); returns ``msg``."""
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


#: CompressedImage.format of a PNG-compressed mono8 mask, as image_transport's compressed
#: publisher writes it for 8-bit single-channel images.
PNG_MASK_FORMAT = "mono8; png compressed "


def mask_to_png(mask: np.ndarray, level: int = 1) -> array.array:
    """Class-id mask (H, W) uint8 -> PNG bytes (lossless, unlike JPEG, which invents class ids
    at boundaries) as the ``array.array('B')`` a CompressedImage's ``data`` takes as it is.
    ``level`` is zlib's 0 (none) .. 9 (smallest)."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"a mask is an (H, W) uint8 array, got {mask.dtype} {mask.shape}")
    ok, encoded = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, int(level)])
    if not ok:
        raise ValueError(f"PNG encoding failed for a {mask.shape} mask")
    data = array.array("B")
    data.frombytes(encoded)
    return data


def mask_to_image_fields(mask: np.ndarray) -> dict[str, Any]:
    """Class-id mask (H, W) uint8 -> mono8 Image fields."""
    return numpy_to_image_fields(mask, "mono8")


def confidence_to_image_fields(confidence: np.ndarray, encoding: str = "mono8") -> dict[str, Any]:
    """Per-pixel confidence (H, W) float in 0..1 -> mono8 (0..255, rounded) or 32FC1 fields."""
    if confidence.ndim != 2:
        raise ValueError(f"confidence must be (H, W), got shape {confidence.shape}")
    if encoding == "mono8":
        scaled = np.clip(confidence, 0.0, 1.0) * 255.0 + 0.5
        return numpy_to_image_fields(scaled.astype(np.uint8), "mono8")
    if encoding == "32FC1":
        return numpy_to_image_fields(confidence.astype(np.float32, copy=False), "32FC1")
    raise ValueError(f"confidence encoding must be 'mono8' or '32FC1', got {encoding!r}")


def _byte_view(data: Any) -> np.ndarray:
    """A uint8 view of a message's data field (array.array, bytes, numpy); lists are copied."""
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _data_size(data: Any) -> int:
    """Length in bytes of a message's data field (array.array, bytes, numpy, list)."""
    if isinstance(data, np.ndarray):
        return int(data.nbytes)
    try:
        return memoryview(data).nbytes
    except TypeError:
        return len(data)


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (ROS 2 sec/nanosec, ROS 1 secs/nsecs) -> integer nanoseconds."""
    sec = getattr(stamp, "sec", getattr(stamp, "secs", 0))
    nanosec = getattr(stamp, "nanosec", getattr(stamp, "nsecs", 0))
    return int(sec) * 1_000_000_000 + int(nanosec)
