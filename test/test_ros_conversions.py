"""dfanet_ros.conversions: Image/CompressedImage <-> numpy, without a ROS graph."""

from __future__ import annotations

import array
import struct
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from dfanet_ros import conversions as conv


def image_msg(pixels: np.ndarray, encoding: str, *, pad: int = 0, big_endian: bool = False,
              height: int | None = None, width: int | None = None):
    """A duck-typed Image whose rows are padded by ``pad`` bytes."""
    rows = pixels.reshape(pixels.shape[0], -1)
    if pixels.dtype.itemsize > 1:
        rows = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<"))
        rows = rows.reshape(pixels.shape[0], -1).view(np.uint8)
    else:
        rows = rows.view(np.uint8)
    padded = np.zeros((rows.shape[0], rows.shape[1] + pad), np.uint8)
    padded[:, : rows.shape[1]] = rows
    return SimpleNamespace(
        height=pixels.shape[0] if height is None else height,
        width=pixels.shape[1] if width is None else width,
        encoding=encoding,
        is_bigendian=int(big_endian),
        step=padded.shape[1],
        data=array.array("B", padded.tobytes()),
    )


def compressed_msg(data: bytes, fmt: str):
    return SimpleNamespace(format=fmt, data=array.array("B", data))


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def camvid_rgb(camvid_samples) -> np.ndarray:
    return camvid_samples(1)[0][0]


# -- raw encodings ----------------------------------------------------------------------------
def test_rgb8_is_a_zero_copy_view(rgb):
    msg = image_msg(rgb, "rgb8")
    out = conv.image_to_rgb(msg)
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    pixels, order = conv.image_for_model(msg)
    assert order == "RGB" and np.shares_memory(pixels, np.frombuffer(msg.data, np.uint8))


def test_padded_rows_honour_step(rgb):
    msg = image_msg(rgb, "rgb8", pad=7)
    assert msg.step == rgb.shape[1] * 3 + 7
    np.testing.assert_array_equal(conv.image_to_rgb(msg), rgb)


def test_bgr8_keeps_bgr_for_the_model_and_swaps_for_rgb(rgb):
    msg = image_msg(rgb[..., ::-1], "bgr8", pad=2)
    pixels, order = conv.image_for_model(msg)
    assert order == "BGR"
    assert np.shares_memory(pixels, np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(pixels, rgb[..., ::-1])
    np.testing.assert_array_equal(conv.image_to_rgb(msg), rgb)


@pytest.mark.parametrize("encoding,order", [("rgba8", "RGB"), ("bgra8", "BGR")])
def test_four_channel_encodings_drop_alpha(rgb, encoding, order):
    colour = rgb if order == "RGB" else rgb[..., ::-1]
    alpha = np.full(rgb.shape[:2] + (1,), 77, np.uint8)
    msg = image_msg(np.concatenate([colour, alpha], axis=2), encoding)
    pixels, got_order = conv.image_for_model(msg)
    assert got_order == order and pixels.shape == rgb.shape
    assert np.shares_memory(pixels, np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(conv.image_to_rgb(msg), rgb)


def test_mono8_numpy_is_2d_and_rgb_replicates(rgb):
    grey = rgb[..., 0].copy()
    msg = image_msg(grey, "mono8", pad=3)
    np.testing.assert_array_equal(conv.image_to_numpy(msg), grey)
    out = conv.image_to_rgb(msg)
    assert out.shape == rgb.shape
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


@pytest.mark.parametrize("big_endian", [False, True])
def test_mono16_honours_byte_order(big_endian):
    values = np.array([[0, 1, 255, 256], [4095, 32768, 65535, 1000]], np.uint16)
    msg = image_msg(values, "mono16", big_endian=big_endian, pad=2)
    np.testing.assert_array_equal(conv.image_to_numpy(msg), values)
    pixels, order = conv.image_for_model(msg)
    assert order == "RGB"
    np.testing.assert_array_equal(pixels[..., 1], (values >> 8).astype(np.uint8))


def _mosaic(rgb_colour: tuple[int, int, int], pattern: str, size: int = 8) -> np.ndarray:
    """A Bayer mosaic of a constant colour: each pixel keeps the channel its filter passes."""
    raw = np.zeros((size, size), np.uint8)
    index = {"R": 0, "G": 1, "B": 2}
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        raw[dy::2, dx::2] = rgb_colour[index[pattern[k]]]
    return raw


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_recover_the_colour(pattern):
    colour = (200, 100, 30)
    msg = image_msg(_mosaic(colour, pattern.upper()), f"bayer_{pattern}8")
    out = conv.image_to_rgb(msg)
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[2:-2, 2:-2], np.broadcast_to(colour, (4, 4, 3)))


@pytest.mark.parametrize(
    "encodings,code",
    [
        (("yuv422", "uyvy"), cv2.COLOR_RGB2YUV_UYVY),
        (("yuv422_yuy2", "yuyv"), cv2.COLOR_RGB2YUV_YUYV),
    ],
)
def test_yuv422_layouts(camvid_rgb, encodings, code):
    rgb = np.ascontiguousarray(camvid_rgb[:64, :96])
    packed = cv2.cvtColor(rgb, code)  # H x W x 2
    for encoding in encodings:
        out = conv.image_to_rgb(image_msg(packed, encoding, pad=4))
        assert out.shape == rgb.shape
        # 4:2:2 chroma subsampling: close, not exact
        assert np.abs(out.astype(int) - rgb).mean() < 6
    other = "yuyv" if encodings[0] == "yuv422" else "uyvy"
    wrong = conv.image_to_rgb(image_msg(packed, other))
    assert np.abs(wrong.astype(int) - rgb).mean() > 20  # byte order matters


def test_real_camvid_frame_from_the_shared_bag(camvid_bag_dirs, camvid_root):
    from rosbags.highlevel import AnyReader

    from dfanet_core.imaging import read_image

    with AnyReader([camvid_bag_dirs["mcap"]]) as reader:
        conn = next(c for c in reader.connections if c.topic == "/camera/image_raw")
        _, _, raw = next(reader.messages(connections=[conn]))
        msg = reader.deserialize(raw, conn.msgtype)
    expected = read_image(camvid_root / "test" / "Seq05VD_f00000.png")
    np.testing.assert_array_equal(conv.image_to_rgb(msg), expected)


# -- raw errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["rgb16", "nv12", "64FC1", "jpeg", ""])
def test_unsupported_encoding_names_the_supported_ones(rgb, encoding):
    msg = image_msg(rgb, "rgb8")
    msg.encoding = encoding
    with pytest.raises(ValueError, match=r"unsupported encoding .*supported: rgb8, bgr8"):
        conv.image_to_rgb(msg)


def test_step_mismatch(rgb):
    msg = image_msg(rgb, "rgb8")
    msg.step = rgb.shape[1] * 3 - 1
    with pytest.raises(ValueError, match="step mismatch: step 29 is smaller than one row"):
        conv.image_to_numpy(msg)
    odd = image_msg(np.zeros((2, 3), np.uint16), "mono16", pad=1)
    with pytest.raises(ValueError, match="not a multiple of 2"):
        conv.image_to_numpy(odd)


def test_truncated_and_oversized_data(rgb):
    msg = image_msg(rgb, "rgb8")
    msg.data = msg.data[:-1]
    with pytest.raises(ValueError, match=r"truncated data: 179 bytes, expected .* = 180"):
        conv.image_to_rgb(msg)
    msg = image_msg(rgb, "rgb8")
    msg.data.extend(b"\0\0")
    with pytest.raises(ValueError, match="2 extra bytes"):
        conv.image_to_rgb(msg)


@pytest.mark.parametrize("height,width", [(0, 0), (0, 5), (5, 0)])
def test_empty_image(height, width):
    msg = SimpleNamespace(height=height, width=width, encoding="rgb8", is_bigendian=0,
                          step=width * 3, data=array.array("B"))
    with pytest.raises(ValueError, match=rf"empty image \({width}x{height}"):
        conv.image_to_rgb(msg)


def test_too_many_pixels_is_refused_before_decoding():
    # claims 100000 x 100000 with no data: refused by the size limit, not by allocating it
    msg = SimpleNamespace(height=100_000, width=100_000, encoding="rgb8", is_bigendian=0,
                          step=300_000, data=b"")
    with pytest.raises(ValueError, match="image too large: 100000x100000 .* max_input_pixels"):
        conv.check_image_header(msg, max_pixels=50_000_000)
    with pytest.raises(ValueError, match="truncated data"):
        conv.check_image_header(msg)


def test_odd_width_yuv_and_channelless_encodings(rgb):
    with pytest.raises(ValueError, match="even width"):
        conv.image_to_rgb(image_msg(np.zeros((2, 3, 2), np.uint8), "yuyv"))
    with pytest.raises(ValueError, match="'8UC3' has no channel order"):
        conv.image_to_rgb(image_msg(rgb, "8UC3"))
    np.testing.assert_array_equal(conv.image_to_numpy(image_msg(rgb, "8UC3")), rgb)


# -- compressed -------------------------------------------------------------------------------
def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    "fmt", ["jpeg", "rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8"]
)
def test_jpeg_decodes_to_rgb(camvid_rgb, fmt):
    msg = compressed_msg(_jpeg(camvid_rgb), fmt)
    out = conv.compressed_to_rgb(msg)
    assert out.shape == camvid_rgb.shape
    assert np.abs(out.astype(int) - camvid_rgb).mean() < 3
    pixels, order = conv.compressed_for_model(msg)
    assert order == "BGR"
    np.testing.assert_array_equal(pixels[..., ::-1], out)


def test_png_is_exact_and_compressed_rgb_order_is_honoured(camvid_rgb):
    np.testing.assert_array_equal(
        conv.compressed_to_rgb(compressed_msg(_png(camvid_rgb), "rgb8; png compressed bgr8")),
        camvid_rgb,
    )
    # image_transport writes "compressed rgb8" when the RGB bytes went into the codec as-is
    ok, buf = cv2.imencode(".png", camvid_rgb)
    msg = compressed_msg(buf.tobytes(), "rgb8; png compressed rgb8")
    pixels, order = conv.compressed_for_model(msg)
    assert order == "RGB"
    np.testing.assert_array_equal(conv.compressed_to_rgb(msg), camvid_rgb)


def test_corrupt_compressed_data_raises(camvid_rgb):
    jpeg = _jpeg(camvid_rgb)
    cases = {
        "truncated": (jpeg[: len(jpeg) // 2], "jpeg", "corrupt jpeg data: truncated"),
        "header zeroed": (jpeg[:3] + bytes(300) + jpeg[303:], "jpeg", "corrupt jpeg data"),
        "not an image": (b"hello world" * 10, "jpeg", "corrupt jpeg data: format says"),
        "empty": (b"", "jpeg", "empty CompressedImage data"),
        "png truncated": (_png(camvid_rgb)[:500], "png", "corrupt png data: truncated"),
        "depth": (jpeg, "16UC1; compressedDepth png", "unsupported CompressedImage format"),
        "other codec": (b"II*\0" + bytes(50), "tiff", "unsupported CompressedImage format"),
    }
    for name, (data, fmt, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            conv.compressed_to_rgb(compressed_msg(data, fmt))
        assert name  # every case raised


def test_compressed_size_limit_is_checked_before_decoding(camvid_rgb):
    png = bytearray(_png(camvid_rgb))
    png[16:24] = struct.pack(">II", 60_000, 60_000)  # claim a 3.6 G pixel image
    with pytest.raises(ValueError, match="image too large: png of 60000x60000"):
        conv.compressed_to_rgb(compressed_msg(bytes(png), "png"), max_pixels=50_000_000)
    with pytest.raises(ValueError, match="image too large: jpeg of 480x360"):
        conv.compressed_to_rgb(compressed_msg(_jpeg(camvid_rgb), "jpeg"), max_pixels=1000)


# -- numpy -> Image fields --------------------------------------------------------------------
def test_mask_fields_round_trip_through_a_real_message():
    from sensor_msgs.msg import Image

    mask = np.random.default_rng(1).integers(0, 11, (37, 53), dtype=np.uint8)
    msg = Image()
    msg.header.frame_id = "camera"
    conv.fill_image(msg, mask, "mono8")
    assert (msg.height, msg.width, msg.encoding, msg.step) == (37, 53, "mono8", 53)
    assert isinstance(msg.data, array.array) and msg.header.frame_id == "camera"
    np.testing.assert_array_equal(conv.image_to_numpy(msg), mask)
    assert conv.mask_to_image_fields(mask)["data"] == msg.data


def test_colour_and_confidence_fields(rgb):
    fields = conv.numpy_to_image_fields(rgb[:, ::-1], "rgb8")  # non-contiguous input
    assert fields["step"] == rgb.shape[1] * 3
    np.testing.assert_array_equal(conv.image_to_rgb(SimpleNamespace(**fields)), rgb[:, ::-1])

    confidence = np.array([[0.0, 0.5], [0.999, 1.0]], np.float32)
    mono = conv.confidence_to_image_fields(confidence, "mono8")
    np.testing.assert_array_equal(
        conv.image_to_numpy(SimpleNamespace(**mono)), [[0, 128], [255, 255]]
    )
    f32 = conv.confidence_to_image_fields(confidence, "32FC1")
    assert f32["encoding"] == "32FC1" and f32["step"] == 8
    np.testing.assert_array_equal(conv.image_to_numpy(SimpleNamespace(**f32)), confidence)
    big = SimpleNamespace(**{**f32, "is_bigendian": 1,
                             "data": confidence.astype(">f4").tobytes()})
    np.testing.assert_array_equal(conv.image_to_numpy(big), confidence)
    with pytest.raises(ValueError, match="'mono8' or '32FC1'"):
        conv.confidence_to_image_fields(confidence, "16UC1")


def test_writing_rejects_arrays_that_do_not_fit_the_encoding(rgb):
    with pytest.raises(ValueError, match=r"mono8 needs a uint8 array of shape \(H, W\)"):
        conv.numpy_to_image_fields(rgb, "mono8")
    with pytest.raises(ValueError, match=r"rgb8 needs a uint8 array of shape \(H, W, 3\)"):
        conv.numpy_to_image_fields(rgb.astype(np.float32), "rgb8")
    with pytest.raises(ValueError, match="cannot write encoding 'yuyv'"):
        conv.numpy_to_image_fields(rgb, "yuyv")
    with pytest.raises(ValueError, match="empty image"):
        conv.numpy_to_image_fields(np.zeros((0, 4), np.uint8), "mono8")


def test_message_data_is_filled_with_one_copy_into_a_reused_buffer():
    from sensor_msgs.msg import Image

    mask = np.random.default_rng(3).integers(0, 11, (48, 64), dtype=np.uint8)
    msg = conv.fill_image(Image(check_fields=True), mask, "mono8")
    buffer = msg.data
    assert isinstance(buffer, array.array) and bytes(buffer) == mask.tobytes()
    other = np.flipud(mask)
    again = conv.fill_image(Image(check_fields=True), other, "mono8", out=buffer)
    assert again.data is buffer and bytes(buffer) == other.tobytes()  # refilled, not reallocated
    wrong_size = conv.fill_image(Image(check_fields=True), other[:10], "mono8", out=buffer)
    assert wrong_size.data is not buffer and len(wrong_size.data) == 10 * 64
    # what the buffer path avoids: rosidl's setter copies unless fields are checked
    assert Image(check_fields=False, data=buffer).data is not buffer


def test_png_mask_is_lossless():
    mask = np.random.default_rng(4).integers(0, 12, (120, 160), dtype=np.uint8)
    mask[:10] = 255  # unknown pixels survive too
    for level in (0, 1, 9):
        data = conv.mask_to_png(mask, level)
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(decoded, mask)
    assert conv.PNG_MASK_FORMAT.startswith("mono8; png compressed")
    with pytest.raises(ValueError, match="a mask is an"):
        conv.mask_to_png(np.zeros((4, 4, 3), np.uint8))
