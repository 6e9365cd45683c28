"""Tests for duetgen.sketch_input: every source format, normalisation, and every bad input.

Fixtures are drawn here, in tmp_path, so each test states exactly what the sketch looks like.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from duetgen.errors import DuetgenInputError
from duetgen.sketch_input import DEFAULT_LIMITS, SketchLimits, load_sketch, read_sketch

SKETCHY = Path(__file__).resolve().parents[2] / "shared" / "data" / "sketchy128" / "sketch"
if not SKETCHY.is_dir():
    SKETCHY = Path("/work/shared/data/sketchy128/sketch")

# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def line_image(x: int = 30, size: int = 120, width: int = 4, mode: str = "RGB") -> Image.Image:
    """A vertical black line at column ``x`` (from y=20 to y=100) on a white ``size`` square."""
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).line([(x, 20), (x, 100)], fill="black", width=width)
    return image.convert(mode)


def ink(image: Image.Image) -> np.ndarray:
    """Boolean ink mask of a normalised sketch."""
    return np.asarray(image) < 128


def centroid(image: Image.Image) -> tuple[float, float]:
    """Ink centroid (x, y) as fractions of the image size."""
    ys, xs = np.nonzero(ink(image))
    return xs.mean() / image.width, ys.mean() / image.height


def iou(a: Image.Image, b: Image.Image) -> float:
    mask_a, mask_b = ink(a), ink(b)
    return float((mask_a & mask_b).sum() / max((mask_a | mask_b).sum(), 1))


def check_normalised(image: Image.Image, size: int) -> None:
    """Common output contract: mode L, square, white background, dark ink present."""
    assert image.mode == "L" and image.size == (size, size)
    pixels = np.asarray(image)
    assert pixels.min() < 64, "the sketch has no dark ink"
    assert np.median(pixels) == 255, "the background is not white"


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def svg(body: str, view_box: str = "0 0 200 200", extra: str = "") -> bytes:
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{view_box}" {extra}>{body}</svg>'.encode()


# ----------------------------------------------------------------------------------------------------------
# Raster formats and normalisation
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "suffix", "kwargs"),
    [
        ("PNG", ".png", {}),
        ("JPEG", ".jpg", {"quality": 90}),
        ("WEBP", ".webp", {"quality": 90}),
        ("BMP", ".bmp", {}),
        ("GIF", ".gif", {}),
        ("TIFF", ".tiff", {}),
    ],
)
def test_raster_formats_keep_position_on_canvas(tmp_path, fmt, suffix, kwargs):
    path = save(line_image(x=30), tmp_path / f"line{suffix}", format=fmt, **kwargs)
    image = read_sketch(path, fit="canvas", size=60)
    check_normalised(image, 60)
    x, y = centroid(image)
    assert abs(x - 30 / 120) < 0.04 and abs(y - 0.5) < 0.04
    assert not ink(image)[:, 30:].any(), "ink leaked into the right half"


def test_ink_fit_centres_and_fills_the_frame(tmp_path):
    path = save(line_image(x=30), tmp_path / "line.png")
    image = read_sketch(path, fit="ink", size=100, margin=0.1)
    check_normalised(image, 100)
    x, y = centroid(image)
    assert abs(x - 0.5) < 0.03 and abs(y - 0.5) < 0.03
    rows = np.flatnonzero(ink(image).any(axis=1))
    assert rows[0] in range(8, 13) and rows[-1] in range(87, 92), "the ink should span the frame minus the margin"


def test_format_is_sniffed_from_content_not_extension(tmp_path):
    png_named_jpg = save(line_image(), tmp_path / "really_png.jpg", format="PNG")
    no_suffix = save(line_image(), tmp_path / "sketch", format="PNG")
    reference = read_sketch(line_image(), size=64)
    assert iou(read_sketch(png_named_jpg, size=64), reference) > 0.95
    assert iou(read_sketch(str(no_suffix), size=64), reference) > 0.95


def test_bytes_source_matches_path_source(tmp_path):
    path = save(line_image(), tmp_path / "line.png")
    assert np.array_equal(np.asarray(read_sketch(path.read_bytes())), np.asarray(read_sketch(path)))


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_animation_uses_first_frame(tmp_path, fmt):
    first, second = line_image(x=20), line_image(x=100)
    path = tmp_path / f"anim.{fmt.lower()}"
    first.save(path, format=fmt, save_all=True, append_images=[second], duration=100)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 2
    x, _ = centroid(read_sketch(path, fit="canvas", size=60))
    assert x < 0.3, "the first frame (line on the left) must be used"


def test_transparent_background_becomes_white(tmp_path):
    # Transparent pixels hold RGB black, as many exporters write them: only alpha says they are background.
    rgba = Image.new("RGBA", (120, 120), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).line([(30, 20), (30, 100)], fill=(0, 0, 0, 255), width=4)
    image = read_sketch(save(rgba, tmp_path / "alpha.png"), fit="canvas", size=60)
    check_normalised(image, 60)
    assert iou(image, read_sketch(line_image(), fit="canvas", size=60)) > 0.9


def test_white_strokes_on_transparent_use_alpha(tmp_path):
    rgba = Image.new("RGBA", (120, 120), (255, 255, 255, 0))
    ImageDraw.Draw(rgba).line([(30, 20), (30, 100)], fill=(255, 255, 255, 255), width=4)
    image = read_sketch(save(rgba, tmp_path / "white_alpha.png"), fit="canvas", size=60)
    assert iou(image, read_sketch(line_image(), fit="canvas", size=60)) > 0.9


def test_inverted_sketch_is_detected_and_flipped(tmp_path):
    inverted = Image.eval(line_image(mode="L"), lambda v: 255 - v)  # white line on black
    image = read_sketch(save(inverted, tmp_path / "inverted.png"), fit="canvas", size=60)
    check_normalised(image, 60)
    assert iou(image, read_sketch(line_image(), fit="canvas", size=60)) > 0.9


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "1", "LA", "RGBA", "I;16", "P-transparency"])
def test_image_modes(tmp_path, mode):
    base = line_image()
    if mode == "I;16":
        grey = np.asarray(base.convert("L"), dtype=np.uint16) * 257  # full 16-bit range: white = 65535
        image = Image.fromarray(grey)
        assert image.mode.startswith("I;16")
    elif mode == "P-transparency":
        image = base.convert("P")
        image.info["transparency"] = 0 if image.getpixel((0, 0)) != 0 else 1  # a non-background index
    else:
        image = base.convert(mode)
    path = save(image, tmp_path / "mode.png")
    with Image.open(path) as reopened:
        assert reopened.mode != "RGB" or mode == "RGB"
    result = read_sketch(path, fit="canvas", size=60)
    check_normalised(result, 60)
    assert iou(result, read_sketch(base, fit="canvas", size=60)) > 0.9


def test_16_bit_mid_grey_is_scaled_not_clipped():
    grey = np.full((100, 100), 65535, dtype=np.uint16)
    grey[20:80, 48:52] = 30000  # 46% grey ink: stays mid grey after scaling, not black or white
    result = np.asarray(read_sketch(Image.fromarray(grey), fit="canvas", size=100))
    assert 100 < result[50, 50] < 140 and result[5, 5] == 255


def test_jpeg_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: the stored left line is displayed on the right
    path = save(line_image(x=30), tmp_path / "rotated.jpg", format="JPEG", exif=exif.tobytes())
    x, _ = centroid(read_sketch(path, fit="canvas", size=60))
    assert x > 0.7


def test_canvas_fit_pads_non_square_to_centred_square():
    wide = Image.new("L", (200, 100), 255)
    ImageDraw.Draw(wide).line([(10, 50), (190, 50)], fill=0, width=4)
    image = read_sketch(wide, fit="canvas", size=100)
    rows = np.flatnonzero(ink(image).any(axis=1))
    assert rows.min() >= 45 and rows.max() <= 55, "the frame is centred vertically in the square"
    assert np.asarray(image)[:20].min() == 255


def test_thin_strokes_survive_large_downscale():
    big = Image.new("L", (2000, 2000), 255)
    ImageDraw.Draw(big).line([(1000, 100), (1000, 1900)], fill=0, width=1)
    image = np.asarray(read_sketch(big, fit="canvas", size=224))
    assert image.min() < 128, "a 1 px line in a 2000 px image must still be dark at 224 px"


def test_numpy_and_torch_sources_match_pil():
    reference = read_sketch(line_image(), fit="canvas", size=64)
    rgb = np.asarray(line_image())
    sources = [
        rgb,  # (H, W, 3) uint8
        rgb[..., 0],  # (H, W) uint8
        rgb.astype(np.float32) / 255.0,  # (H, W, 3) float
        np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),  # (H, W, 4)
        torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0,  # (3, H, W) float
        torch.from_numpy(rgb[..., 0].copy()).unsqueeze(0),  # (1, H, W) uint8
    ]
    for source in sources:
        assert iou(read_sketch(source, fit="canvas", size=64), reference) > 0.95


def test_load_sketch_returns_three_channel_unit_tensor(tmp_path):
    tensor = load_sketch(save(line_image(), tmp_path / "line.png"), size=48)
    assert tensor.shape == (3, 48, 48) and tensor.dtype == torch.float32
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])
    assert tensor.max() == 1.0 and tensor.min() < 0.25 and tensor[:, 0, 0].eq(1.0).all()


# ----------------------------------------------------------------------------------------------------------
# SVG
# ----------------------------------------------------------------------------------------------------------


def test_svg_matches_the_same_drawing_as_png(tmp_path):
    png = Image.new("L", (200, 200), 255)
    draw = ImageDraw.Draw(png)
    draw.line([(20, 180), (100, 20), (180, 180), (20, 180)], fill=0, width=6, joint="curve")
    draw.ellipse((70, 110, 130, 170), outline=0, width=6)
    body = (
        '<polygon points="20,180 100,20 180,180" fill="none" stroke="black" stroke-width="6"/>'
        '<circle cx="100" cy="140" r="27" fill="none" stroke="#000" stroke-width="6"/>'
    )
    svg_path = tmp_path / "shape.svg"
    svg_path.write_bytes(svg(body))
    for fit in ("canvas", "ink"):
        from_png, from_svg = read_sketch(png, fit=fit, size=64), read_sketch(svg_path, fit=fit, size=64)
        check_normalised(from_svg, 64)
        assert iou(from_png, from_svg) > 0.6, fit


def test_svg_path_curves_follow_their_control_points():
    cases = {
        "M 10 50 Q 50 0 90 50": (50, 25),  # quadratic peak: y = 0.25*50 + 0.5*0 + 0.25*50
        "M 10 50 C 10 0 90 0 90 50": (50, 12.5),  # cubic peak: 0.125*50 + 0.375*0 * 2 + 0.125*50
        "M 10 50 A 40 40 0 0 1 90 50": (50, 10),  # clockwise half circle over the top
        "M 10 50 T 90 50": (50, 50),  # T with no previous Q is a straight line
    }
    for path, (px, py) in cases.items():
        data = svg(f'<path d="{path}" fill="none" stroke="black" stroke-width="2"/>', view_box="0 0 100 100")
        mask = ink(read_sketch(data, fit="canvas", size=100))
        assert mask[round(py) - 2 : round(py) + 3, px - 2 : px + 3].any(), path
        if py != 50:
            assert not mask[48:53, 48:53].any(), f"{path} was drawn as a straight chord"


def test_svg_relative_commands_and_close_path():
    data = svg('<path d="m 10 10 h 80 v 80 h -80 z"/>', view_box="0 0 100 100")
    mask = ink(read_sketch(data, fit="canvas", size=100))
    for x, y in [(50, 10), (90, 50), (50, 90), (10, 50)]:  # the four sides, the last from z
        assert mask[y - 1 : y + 2, x - 1 : x + 2].any(), (x, y)
    assert not mask[30:70, 30:70].any(), "an unstyled path is an outline, not a filled square"


@pytest.mark.parametrize(
    "transform",
    ["translate(100, 0)", "matrix(1 0 0 1 100 0)", "scale(3 1)", "rotate(180 100 50)"],
)
def test_svg_transforms_move_ink_to_the_right_half(transform):
    line = '<line x1="50" y1="20" x2="50" y2="80" stroke="black" stroke-width="4"/>'
    left = read_sketch(svg(line, view_box="0 0 200 100"), fit="canvas", size=100)
    moved = read_sketch(svg(f'<g transform="{transform}">{line}</g>', view_box="0 0 200 100"), fit="canvas", size=100)
    assert centroid(left)[0] < 0.3
    assert 0.65 < centroid(moved)[0] < 0.85, transform


def test_svg_shapes_polyline_rect_ellipse_and_style_attribute():
    body = (
        '<g style="stroke:#222;fill:none;stroke-width:3">'
        '<polyline points="10,10 50,40 90,10"/><rect x="10" y="60" width="30" height="30"/>'
        '<ellipse cx="70" cy="75" rx="15" ry="10"/></g>'
    )
    mask = ink(read_sketch(svg(body, view_box="0 0 100 100"), fit="canvas", size=100))
    assert mask[38:43, 48:53].any() and mask[58:63, 20:30].any() and mask[63:68, 68:73].any()
    assert not mask[70:80, 20:30].any(), "fill:none shapes stay hollow"


def test_svg_white_background_rect_is_not_ink():
    body = (
        '<rect width="100%" height="100%" fill="white"/>'
        '<line x1="10" y1="50" x2="90" y2="50" stroke="black" stroke-width="2"/>'
    )
    image = read_sketch(svg(body, view_box="0 0 100 100"), fit="canvas", size=100)
    check_normalised(image, 100)
    assert not ink(image)[:, :5].any(), "the background rect must not be outlined"


def test_svg_plain_doctype_is_accepted():
    data = (
        b'<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
        b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n' + svg('<line x1="0" y1="0" x2="200" y2="200"/>')
    )
    check_normalised(read_sketch(data, size=32), 32)


@pytest.mark.parametrize(
    "payload",
    [
        # billion laughs
        '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
        '<svg xmlns="http://www.w3.org/2000/svg"><text>&d;</text></svg>',
        # external entity
        '<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><svg><text>&xxe;</text></svg>',
        '<!doctype svg [ <!entity x "y"> ]><svg/>',
    ],
)
def test_hostile_svg_is_refused_fast(payload):
    start = time.perf_counter()
    with pytest.raises(DuetgenInputError, match=r"'<bytes>' declares XML entities"):
        read_sketch(payload.encode())
    assert time.perf_counter() - start < 1.0


def test_svg_element_limit(tmp_path):
    path = tmp_path / "many.svg"
    path.write_bytes(svg("<g/>" * 500 + '<line x1="0" y1="0" x2="9" y2="9"/>'))
    with pytest.raises(DuetgenInputError, match=r"many\.svg.*over 100 SVG elements"):
        read_sketch(path, limits=SketchLimits(max_svg_elements=100))
    check_normalised(read_sketch(path, size=32), 32)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"<svg><path d='M 0 0 L 10'/></svg>", r"malformed <path>"),
        (b"<svg><line x1='0' x2='5' transform='explode(3)'/></svg>", r"unsupported transform"),
        (b"<svg><g>", r"not valid SVG/XML"),
        (b"<html><body/></html>", r"not SVG \(root element <html>\)"),
        (svg('<text x="5" y="5">only text</text>'), r"is blank: no strokes found"),
        (svg('<line x1="500" y1="500" x2="600" y2="600"/>'), r"is blank.*outside the canvas"),
    ],
)
def test_bad_svg(data, match):
    with pytest.raises(DuetgenInputError, match=match):
        read_sketch(data, fit="canvas")


# ----------------------------------------------------------------------------------------------------------
# Stroke data: QuickDraw ndjson and sketch-rnn stroke-3
# ----------------------------------------------------------------------------------------------------------

HORIZONTAL = [[[0, 50, 100], [10, 10, 10]]]  # simplified QuickDraw: one stroke [xs, ys]
VERTICAL_RAW = [[[10, 10, 10], [0, 50, 100], [0, 16, 33]]]  # raw QuickDraw: [xs, ys, ts]


def extent(image: Image.Image) -> tuple[int, int]:
    """Ink bounding-box (width, height) in pixels."""
    mask = ink(image)
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1


def test_quickdraw_ndjson_raw_and_simplified_with_index(tmp_path):
    path = tmp_path / "cat.ndjson"
    records = [{"word": "cat", "key_id": "1", "drawing": HORIZONTAL}, {"word": "cat", "drawing": VERTICAL_RAW}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    horizontal, vertical = read_sketch(path, size=64), read_sketch(path, size=64, index=1)
    for image in (horizontal, vertical):
        check_normalised(image, 64)
        assert abs(centroid(image)[0] - 0.5) < 0.05 and abs(centroid(image)[1] - 0.5) < 0.05
    assert extent(horizontal)[0] > 50 and extent(horizontal)[1] < 6
    assert extent(vertical)[1] > 50 and extent(vertical)[0] < 6
    with pytest.raises(DuetgenInputError, match=r"cat\.ndjson' has 2 ndjson lines; index 2 is out of range"):
        read_sketch(path, index=2)


def test_quickdraw_bare_json_drawing_and_square():
    square = [[[0, 100, 100, 0, 0], [0, 0, 100, 100, 0]]]
    image = read_sketch(json.dumps(square).encode(), size=64, fit="canvas")  # no canvas: still ink-fit
    mask = ink(image)
    assert mask[5:10, 32].any() and mask[54:59, 32].any() and mask[32, 5:10].any() and mask[32, 54:59].any()
    assert not mask[15:49, 15:49].any(), "the square is an outline"


def test_strokes_are_antialiased_and_scale_with_size():
    small, large = (
        read_sketch(json.dumps(HORIZONTAL).encode(), size=96),
        read_sketch(json.dumps(HORIZONTAL).encode(), size=384),
    )
    assert extent(large)[1] > extent(small)[1], "line width grows with the output size"
    values = np.unique(np.asarray(large))
    assert len(values) > 2, "antialiased edges have intermediate greys"


def stroke3_l_shape() -> np.ndarray:
    """An L (down 100, right 60), a pen-up move to the top right, and a short bar back towards the left."""
    return np.array([[0, 0, 0], [0, 100, 0], [60, 0, 1], [0, -100, 0], [-30, 0, 1]], dtype=np.int16)


def test_sketch_rnn_npz_object_arrays_pick_by_index(tmp_path):
    drawings = np.empty(2, dtype=object)
    drawings[0] = np.array([[0, 0, 0], [100, 0, 1]], dtype=np.int16)  # horizontal
    drawings[1] = np.array([[0, 0, 0], [0, 100, 1]], dtype=np.int16)  # vertical
    path = tmp_path / "cat.npz"
    np.savez(path, train=drawings, valid=drawings[:1], test=drawings[:1])
    assert extent(read_sketch(path, size=64))[1] < 6
    assert extent(read_sketch(path, size=64, index=1))[0] < 6
    with pytest.raises(DuetgenInputError, match=r"has 2 drawings in 'train'; index 5"):
        read_sketch(path, index=5)


def test_sketch_rnn_raw_array_npz_and_npy(tmp_path):
    npz, npy = tmp_path / "one.npz", tmp_path / "one.npy"
    np.savez_compressed(npz, drawing=stroke3_l_shape())
    np.save(npy, stroke3_l_shape())
    for path in (npz, npy):
        image = read_sketch(path, size=64)
        check_normalised(image, 64)
        mask = ink(image)
        width, height = extent(image)
        assert height > 50 and 0.5 < width / height < 0.7, "the L is 60 wide, 100 tall"
        rows, right = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))[-1]
        middle = (rows[0] + rows[-1]) // 2
        assert not mask[middle - 8 : middle + 8, right - 3 : right + 1].any(), "pen-up moves are not drawn"


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/duetgen_pickle_pwned",))


def test_npz_with_malicious_pickle_is_refused(tmp_path):
    marker = Path("/tmp/duetgen_pickle_pwned")
    marker.unlink(missing_ok=True)
    payload = np.empty(1, dtype=object)
    payload[0] = _Exploit()
    path = tmp_path / "evil.npz"
    np.savez(path, train=payload)
    with pytest.raises(DuetgenInputError, match=r"evil\.npz.*refusing to unpickle posix\.system"):
        read_sketch(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"word": "cat"}', r"has no 'drawing' key"),
        (b'{"drawing": [[[1, 2], [3]]]}', r"stroke 0 must hold two lists"),
        (b'{"drawing": [[["a"], ["b"]]]}', r"non-numeric"),
        (b'{"drawing": []}', r"is blank: no strokes found"),
        (b'{"drawing": [[[1, 2', r"not valid JSON"),
    ],
)
def test_bad_quickdraw(content, match):
    with pytest.raises(DuetgenInputError, match=match):
        read_sketch(content)


def test_stroke_limits(tmp_path):
    drawing = [[[i, i + 1], [0, 1]] for i in range(20)]
    with pytest.raises(DuetgenInputError, match=r"20 strokes, over the limit of 10"):
        read_sketch(json.dumps(drawing).encode(), limits=SketchLimits(max_strokes=10))
    with pytest.raises(DuetgenInputError, match=r"over 15 points"):
        read_sketch(json.dumps(drawing).encode(), limits=SketchLimits(max_points=15))


# ----------------------------------------------------------------------------------------------------------
# Bad inputs: one error class, a message naming the file and the problem
# ----------------------------------------------------------------------------------------------------------


def big_png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height``; its pixel data is a few bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def truncated_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    ("filename", "content", "match"),
    [
        ("empty.png", b"", r"'.*empty\.png' is 0 bytes: not an image"),
        ("notes.png", b"shopping list: eggs, milk\n", r"'.*notes\.png' is not an image"),
        ("cut.png", truncated_png(), r"'.*cut\.png' could not be decoded as PNG: truncated or corrupt"),
        ("bomb.png", big_png_header(60000, 60000), r"'.*bomb\.png' is too large.*SketchLimits\.max_pixels"),
        ("wide.png", big_png_header(5000, 5000), r"'.*wide\.png' is too large: 5000x5000 = 25,000,000 pixels"),
        ("broken.zip", b"PK\x03\x04garbage", r"'.*broken\.zip' could not be read as a sketch-rnn"),
    ],
)
def test_bad_files(tmp_path, filename, content, match):
    path = tmp_path / filename
    path.write_bytes(content)
    start = time.perf_counter()
    with pytest.raises(DuetgenInputError, match=match) as caught:
        read_sketch(path)
    assert time.perf_counter() - start < 2.0
    assert "\n" not in str(caught.value)


def test_blank_sketches_are_refused(tmp_path):
    white = save(Image.new("RGB", (100, 100), "white"), tmp_path / "white.png")
    speck = Image.new("L", (400, 400), 255)
    speck.putpixel((200, 200), 0)  # one dark pixel: less than the minimum ink fraction
    for source, name in [(white, "white.png"), (speck, "<image>"), (np.zeros((50, 50), np.uint8), "<array>")]:
        with pytest.raises(DuetgenInputError, match=rf"{name}' is blank: no strokes found"):
            read_sketch(source)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(DuetgenInputError, match=r"nope\.png' does not exist"):
        read_sketch(tmp_path / "nope.png")
    with pytest.raises(DuetgenInputError, match=r"is a directory, not a file"):
        read_sketch(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_path(tmp_path):
    path = save(line_image(), tmp_path / "locked.png")
    path.chmod(0)
    try:
        with pytest.raises(DuetgenInputError, match=r"locked\.png' cannot be read: permission denied"):
            read_sketch(path)
    finally:
        path.chmod(0o644)


def test_limits_on_bytes_and_pixels(tmp_path):
    path = save(line_image(), tmp_path / "line.png")
    with pytest.raises(DuetgenInputError, match=r"line\.png' is .* bytes, over the limit of 10 "):
        read_sketch(path, limits=SketchLimits(max_file_bytes=10))
    with pytest.raises(DuetgenInputError, match=r"'<bytes>' is .* bytes, over the limit"):
        read_sketch(path.read_bytes(), limits=SketchLimits(max_file_bytes=10))
    with pytest.raises(DuetgenInputError, match=r"120x120 = 14,400 pixels is over the limit of 1,000"):
        read_sketch(path, limits=SketchLimits(max_pixels=1000))
    assert DEFAULT_LIMITS.max_pixels == 4096 * 4096


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fit": "stretch"}, r"fit must be 'ink' or 'canvas'; got 'stretch'"),
        ({"size": 3}, r"size must be an int from 8 to 4096; got 3"),
        ({"margin": 0.5}, r"margin must be a number"),
        ({"index": -1}, r"index must be an int >= 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(DuetgenInputError, match=match):
        read_sketch(line_image(), **kwargs)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (np.full((10, 10), 200.0), r"'<array>' has float values in \[200, 200\]; they must lie in \[0, 1\]"),
        (np.zeros((4, 4, 5), np.uint8), r"must have shape \(H, W\) or \(H, W, 1\|3\|4\)"),
        (torch.zeros(2, 5, 5, 5), r"'<tensor>' must have shape \(C, H, W\)"),
        (12345, r"sketch source must be a path, bytes, a PIL image, a numpy array or a torch tensor; got int"),
    ],
)
def test_bad_in_memory_sources(source, match):
    with pytest.raises(DuetgenInputError, match=match):
        read_sketch(source)


def test_errors_chain_the_original_exception(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(truncated_png())
    with pytest.raises(DuetgenInputError) as caught:
        read_sketch(path)
    assert caught.value.__cause__ is not None and isinstance(caught.value, ValueError)


# ----------------------------------------------------------------------------------------------------------
# Real Sketchy sketches
# ----------------------------------------------------------------------------------------------------------


def sketchy_files(count: int = 20) -> list[Path]:
    if not SKETCHY.is_dir():
        return []
    categories = sorted(p for p in SKETCHY.iterdir() if p.is_dir())
    step = max(1, len(categories) // count)
    files = [next(iter(sorted(c.glob("*.png"))), None) for c in categories[::step][:count]]
    return [f for f in files if f is not None]


@pytest.mark.skipif(not SKETCHY.is_dir(), reason="Sketchy data (../shared/data/sketchy128) is not on this machine")
@pytest.mark.parametrize("path", sketchy_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_sketchy_sketches(path):
    image = read_sketch(path)
    check_normalised(image, 224)
    fraction = ink(image).mean()
    assert 0.01 < fraction < 0.35, f"ink fraction {fraction:.3f}"
    x, y = centroid(image)
    assert 0.3 < x < 0.7 and 0.3 < y < 0.7
    mask = ink(image)
    assert not mask[:10].any() and not mask[-10:].any(), "ink-fit leaves a white margin"
    tensor = load_sketch(path, fit="canvas", size=128)
    original = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    assert np.abs(tensor[0].numpy() - original).mean() < 0.02, "a 128 px sketch on its canvas is unchanged"


def test_read_photo_reads_rgb_and_refuses_bad_input(tmp_path):
    from duetgen import read_photo

    buf = io.BytesIO()
    Image.new("RGBA", (30, 20), (10, 200, 30, 128)).save(buf, format="PNG")
    photo = read_photo(buf.getvalue(), "p.png")
    assert photo.mode == "RGB" and photo.size == (30, 20)
    path = tmp_path / "p.png"
    path.write_bytes(buf.getvalue())
    assert read_photo(path).tobytes() == photo.tobytes() == read_photo(Image.open(path)).tobytes()
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, format="ICO")
    with pytest.raises(DuetgenInputError, match="is ICO, not one of PNG"):
        read_photo(ico.getvalue(), "x.ico")
    with pytest.raises(DuetgenInputError, match="over the 10 bytes limit"):
        read_photo(buf.getvalue(), "p.png", limits=SketchLimits(max_file_bytes=10))
    with pytest.raises(DuetgenInputError, match="over the limit of 100 pixels"):
        read_photo(path, limits=SketchLimits(max_pixels=100))
    with pytest.raises(DuetgenInputError, match="does not exist"):
        read_photo(tmp_path / "missing.png")
    with pytest.raises(DuetgenInputError, match="not an image"):
        read_photo(b"hello", "notes.txt")
    with pytest.raises(DuetgenInputError, match="got int"):
        read_photo(3)
