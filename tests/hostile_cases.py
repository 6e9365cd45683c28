"""Hostile files: each case writes a crafted file (or folder) and feeds it to the duetgen entry point that reads it.

Shared by ``tests/test_hostile_files.py`` (in process: error type, message, time) and
``benchmarks/bench_hostile_files.py`` (each case in a fresh subprocess: wall time and peak RSS against a baseline).

Every case is refused with a one-line duetgen error whose message names the problem and the fix, except where the
safe behaviour is to go on: an animated GIF is read from its first frame only, and ``duetgen index`` skips symlink
loops and special files (reported in its skipped count) and indexes the real photos. Either way the case must
finish within its time bound and memory bound, and must never read a file an XML entity points at nor run code
from a pickle.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from duetgen.errors import CheckpointError, DuetgenInputError

PWNED = Path("/tmp/duetgen_hostile_pwned")  # a pickle payload would create this file


@dataclass
class Case:
    """One hostile input.

    Attributes:
        name: short id (table row, test id).
        what: one line describing the file.
        make: writes the hostile file(s) under a folder (may be slow: not timed).
        run: reads them with duetgen (timed); returns a value for ``check``.
        expect: the error type it must raise, or None when it must complete.
        match: regexes the message (or, with expect None, the text ``run`` returns) must all match: the problem and
            the fix.
        seconds: time bound of ``run``.
        extra_mb: bound on the peak RSS growth of ``run`` over the process after imports.
    """

    name: str
    what: str
    make: Callable[[Path], None]
    run: Callable[[Path], object]
    expect: type[BaseException] | None
    match: tuple[str, ...]
    seconds: float = 5.0
    extra_mb: int = 300
    imports: tuple[str, ...] = field(default=("duetgen.sketch_input",))


# ---------------------------------------------------------------------------------------------------------------
# SVG / XML
# ---------------------------------------------------------------------------------------------------------------

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><text>&xxe;</text><path d="M0 0 L10 10"/></svg>"""

XXE_PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE svg [<!ENTITY % ext SYSTEM "file:///etc/passwd"> %ext;]>
<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0 L10 10"/></svg>"""


def billion_laughs(levels: int = 10) -> bytes:
    ents = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{k} "{f"&lol{k - 1};" * 10}">' for k in range(1, levels)]
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE svg [{"".join(ents)}]>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg"><desc>&lol{levels - 1};</desc><path d="M0 0 L9 9"/></svg>'
    ).encode()


def deep_svg(depth: int = 50_000) -> bytes:
    return (
        b'<svg xmlns="http://www.w3.org/2000/svg">' + b"<g>" * depth + b'<path d="M0 0 L9 9"/>' + b"</g>" * depth
        + b"</svg>"
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# raster bombs
# ---------------------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, rows: int = 0) -> bytes:
    """A greyscale PNG declaring width x height; with ``rows``, that many rows of compressed zeros (no more)."""
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if rows:
        comp = zlib.compressobj(9)
        row = b"\x00" * (width + 1)
        data = b"".join(comp.compress(row) for _ in range(rows)) + comp.flush()
        out += _chunk(b"IDAT", data)
    return out + _chunk(b"IEND", b"")


def jpeg_bomb(width: int = 65000, height: int = 65000) -> bytes:
    """A valid small JPEG whose frame header (SOF0) is patched to declare huge dimensions."""
    b = io.BytesIO()
    Image.new("L", (16, 16), 255).save(b, "JPEG")
    data = bytearray(b.getvalue())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gif_many_frames(frames: int = 5000, size: int = 256) -> bytes:
    """An animated GIF of ``frames`` frames: the first holds a drawing, each later one sets one pixel.

    PIL writes the first two frames; the second frame's block (a 1x1 sub-image) is then repeated at moving
    positions, so building the file takes milliseconds and no memory (PIL's writer keeps every frame).
    """
    first = Image.new("L", (size, size), 255)
    ImageDraw.Draw(first).line([(10, 10), (size - 10, size - 30)], fill=0, width=4)
    second = first.copy()
    second.putpixel((3, 3), 0)
    b = io.BytesIO()
    first.save(b, "GIF", save_all=True, append_images=[second], duration=10, loop=0)
    data = b.getvalue()
    start = data.rfind(b"\x21\xf9\x04")  # the second frame: graphic control extension, then image descriptor
    head, block = data[:start], bytearray(data[start:-1])  # without the trailer
    assert block[8] == 0x2C, "unexpected GIF layout"
    out = [head]
    for k in range(frames - 1):
        struct.pack_into("<HH", block, 9, k % size, (k // size) % size)
        out.append(bytes(block))
    return b"".join(out) + b";"


# ---------------------------------------------------------------------------------------------------------------
# stroke data
# ---------------------------------------------------------------------------------------------------------------


def npz_zip_bomb(mb: int = 200) -> bytes:
    """A sketch-rnn .npz whose one array is ``mb`` MB of zeros, deflated to a few hundred KB."""
    header = io.BytesIO()
    n = mb * 2**20 // 6
    np.lib.format.write_array_header_1_0(header, {"descr": "<i2", "fortran_order": False, "shape": (n, 3)})
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("train.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            zeros = b"\x00" * 2**20
            for _ in range(mb):
                f.write(zeros)
    return b.getvalue()


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


def npz_malicious_pickle() -> bytes:
    payload = np.empty(1, dtype=object)
    payload[0] = _Exploit()
    b = io.BytesIO()
    np.savez(b, train=payload)
    return b.getvalue()


def _py2_pickled_array(shape: tuple[int, ...], spec: bytes, order: bytes, data_op: bytes) -> bytes:
    """Pickle opcodes of ``numpy.core.multiarray._reconstruct`` as Python 2's numpy wrote them (str data)."""

    def string(b: bytes) -> bytes:  # SHORT_BINSTRING: a Python 2 str
        return b"U" + bytes([len(b)]) + b

    flags = b"K?" if spec == b"O8" else b"K\x00"
    dtype = (
        b"cnumpy\ndtype\n" + string(spec) + b"K\x00K\x01\x87R(K\x03" + string(order) + b"NNNJ\xff\xff\xff\xff"
        + b"J\xff\xff\xff\xff" + flags + b"tb"
    )  # fmt: skip
    dims = b"(" + b"".join(b"K" + bytes([d]) for d in shape) + b"t"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b") + b"\x87R(K\x01" + dims
        + dtype + b"\x89" + data_op + b"tb"
    )  # fmt: skip


def py2_object_npz(declared: int = 1) -> bytes:
    """A sketch-rnn .npz as Python 2 numpy wrote it: 'train' is an object array of one (4, 3) int16 drawing whose
    pickle declares ``declared`` items (1: valid; more: the list is shorter than the shape)."""
    inner = np.array([[0, 1, 0], [3, 4, 0], [6, 7, 1], [9, 10, 0]], dtype="<i2")
    inner_pickle = _py2_pickled_array((4, 3), b"i2", b"<", b"U" + bytes([inner.nbytes]) + inner.tobytes())
    pickled = b"\x80\x02" + _py2_pickled_array((declared,), b"O8", b"|", b"]" + inner_pickle + b"a") + b"."
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (declared,)})
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("train.npy", header.getvalue() + pickled)
    return b.getvalue()


def deep_json(depth: int = 200_000) -> bytes:
    return b'{"drawing": ' + b"[" * depth + b"]" * depth + b"}"


# ---------------------------------------------------------------------------------------------------------------
# folders: gallery photos with symlink loops, checkpoints with pickles or hostile configs
# ---------------------------------------------------------------------------------------------------------------


def tiny_encoder_folder(folder: Path) -> Path:
    """A tiny real encoder saved with save_pretrained (config.json + safetensors)."""
    import torch

    from duetgen import ComposedQueryEncoder
    from duetgen.backbones import get_clip_config

    torch.manual_seed(0)
    enc = ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny").eval()
    enc.save_pretrained(folder, safe_serialization=True)
    return folder


def make_symlink_loop_photos(root: Path) -> None:
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "d1").mkdir()
    (photos / "d2").mkdir()
    for i, where in enumerate((photos, photos / "sub", photos / "d1", photos / "d2")):
        im = Image.new("RGB", (40, 32), (255, 255, 255))
        ImageDraw.Draw(im).line([(2, 2), (30 + i, 25)], fill=(200, 0, 0), width=3)
        im.save(where / f"photo{i}.png")
    os.symlink("..", photos / "sub" / "loop")  # sub/loop -> photos (a cycle)
    os.symlink(".", photos / "sub" / "self")  # a folder that is itself
    os.symlink("../d2", photos / "d1" / "to_d2")  # d1 <-> d2
    os.symlink("../d1", photos / "d2" / "to_d1")
    os.symlink("selfloop.png", photos / "selfloop.png")  # a file link that points at itself (ELOOP)
    os.symlink("/dev/zero", photos / "zero.png")  # an endless special file
    tiny_encoder_folder(root / "model")


def run_index(root: Path) -> str:
    """``duetgen index photos --out gallery --model model`` in this process; returns what it printed."""
    import contextlib

    from duetgen.cli import main

    out = io.StringIO()
    debug = os.environ.get("DUETGEN_DEBUG")
    os.environ["DUETGEN_DEBUG"] = "1"  # the CLI re-raises its duetgen error instead of printing it and exiting 2
    try:
        with contextlib.redirect_stdout(out):
            rc = main(["index", str(root / "photos"), "--out", str(root / "gallery"), "--model", str(root / "model"),
                       "--num-workers", "0", "--quiet"])  # fmt: skip
    finally:
        if debug is None:
            del os.environ["DUETGEN_DEBUG"]
        else:
            os.environ["DUETGEN_DEBUG"] = debug
    if rc != 0:
        raise RuntimeError(f"duetgen index exited {rc}")
    manifest = json.loads((root / "gallery" / "manifest.json").read_text())
    reasons = sorted({s["reason"] for s in manifest["skipped"]})
    return f"{out.getvalue().strip()} | skipped: {reasons}"


def make_self_loop_root(root: Path) -> None:
    os.symlink("photos", root / "photos")  # the photos folder is a link to itself
    tiny_encoder_folder(root / "model")


def make_checkpoint(root: Path, *, pickle_name: str | None = None, cfg_update: dict | None = None,
                    clip_update: dict | None = None, drop_safetensors: bool = False) -> None:  # fmt: skip
    folder = tiny_encoder_folder(root / "ckpt")
    if pickle_name:
        (folder / pickle_name).write_bytes(pickle.dumps(_Exploit()))
    if drop_safetensors:
        for f in folder.glob("*.safetensors"):
            f.unlink()
    if cfg_update or clip_update:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(cfg_update or {})
        for part, values in (clip_update or {}).items():
            cfg["clip_config"][part].update(values)
        (folder / "config.json").write_text(json.dumps(cfg))


def load_checkpoint(root: Path):
    from duetgen import load_encoder

    return load_encoder(root / "ckpt")


# ---------------------------------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------------------------------


def _file_case(name: str, what: str, data: Callable[[], bytes], expect, match, *, reader: str = "sketch",
               seconds: float = 5.0, extra_mb: int = 300, suffix: str = ".bin") -> Case:  # fmt: skip
    filename = f"{name}{suffix}"

    def make(root: Path) -> None:
        (root / filename).write_bytes(data())

    def run(root: Path):
        if reader == "sketch":
            from duetgen.sketch_input import read_sketch

            return read_sketch(root / filename, size=64)
        from duetgen.datasets._common import open_image  # the dataset loaders' decoder

        return open_image(root / filename)

    imports = ("duetgen.sketch_input",) if reader == "sketch" else ("duetgen.datasets",)
    return Case(name, what, make, run, expect, match, seconds, extra_mb, imports)


CKPT_IMPORTS = ("duetgen.loading", "open_clip", "diffusers.models.modeling_utils", "safetensors.torch")

CASES: list[Case] = [
    _file_case(
        "svg_xxe",
        "SVG with an external entity (XXE) pointing at file:///etc/passwd",
        lambda: XXE,
        DuetgenInputError,
        (r"declares XML entities", r"remove the DOCTYPE"),
        suffix=".svg",
    ),
    _file_case(
        "svg_xxe_parameter",
        "SVG with an external parameter entity (%ext;) on file:///etc/passwd",
        lambda: XXE_PARAMETER,
        DuetgenInputError,
        (r"declares XML entities", r"remove the DOCTYPE"),
        suffix=".svg",
    ),
    _file_case(
        "svg_xxe_utf16",
        "the XXE SVG encoded as UTF-16 (with a byte-order mark)",
        lambda: XXE.decode().encode("utf-16"),
        DuetgenInputError,
        (r"declares XML entities", r"remove the DOCTYPE"),
        suffix=".svg",
    ),
    _file_case(
        "svg_billion_laughs",
        "SVG with nested entities that expand to 10^9 'lol's",
        billion_laughs,
        DuetgenInputError,
        (r"declares XML entities", r"remove the DOCTYPE"),
        suffix=".svg",
    ),
    _file_case(
        "svg_deep_nesting",
        "SVG with 50,000 nested <g> elements",
        deep_svg,
        DuetgenInputError,
        (r"nests SVG elements over 64 deep", r"flatten its groups"),
        suffix=".svg",
    ),
    _file_case(
        "png_60000_header_only",
        "PNG declaring 60000x60000 pixels, header only (57 bytes)",
        lambda: png_bomb(60000, 60000),
        DuetgenInputError,
        (r"too large", r"3,600,000,000 pixels", r"decompression bomb", r"downscale it first"),
        suffix=".png",
    ),
    _file_case(
        "png_60000_zeros",
        "PNG declaring 60000x60000 with 2,000 rows of deflated zeros",
        lambda: png_bomb(60000, 60000, rows=2000),
        DuetgenInputError,
        (r"too large", r"3,600,000,000 pixels", r"downscale it first"),
        suffix=".png",
    ),
    _file_case(
        "png_8000_zeros",
        "PNG declaring 8000x8000 (under PIL's bomb threshold) of deflated zeros",
        lambda: png_bomb(8000, 8000, rows=500),
        DuetgenInputError,
        (r"too large", r"8000x8000 = 64,000,000 pixels", r"SketchLimits.max_pixels", r"downscale it first"),
        suffix=".png",
    ),
    _file_case(
        "jpeg_bomb",
        "JPEG whose frame header declares 65000x65000",
        jpeg_bomb,
        DuetgenInputError,
        (r"too large", r"4,225,000,000 pixels", r"decompression bomb", r"downscale it first"),
        suffix=".jpg",
    ),
    _file_case(
        "jpeg_bomb_dataset",
        "the JPEG bomb read by a dataset loader (datasets' open_image)",
        jpeg_bomb,
        DuetgenInputError,
        (r"too large", r"4,225,000,000 pixels", r"downscale it first"),
        reader="dataset",
        suffix=".jpg",
    ),
    _file_case(
        "png_bomb_dataset",
        "PNG declaring 9500x9500 (just over PIL's bomb threshold) read by a dataset loader",
        lambda: png_bomb(9500, 9500, rows=100),
        DuetgenInputError,
        (r"too large", r"90,250,000 pixels", r"downscale it first"),
        reader="dataset",
        suffix=".png",
    ),
    _file_case(
        "gif_5000_frames",
        "animated GIF of 5,000 256x256 frames: read from its first frame only",
        gif_many_frames,
        None,
        (),
        seconds=5.0,
        suffix=".gif",
    ),
    _file_case(
        "npz_zip_bomb",
        "sketch-rnn .npz whose array inflates to 200 MB",
        npz_zip_bomb,
        DuetgenInputError,
        (r"uncompressed, over the limit", r"SketchLimits.max_file_bytes"),
        suffix=".npz",
    ),
    _file_case(
        "npz_malicious_pickle",
        "sketch-rnn .npz whose object array pickles os.system('touch ...')",
        npz_malicious_pickle,
        DuetgenInputError,
        (r"not a numpy array", r"refusing to unpickle posix\.system", r"never runs pickled code"),
        suffix=".npz",
    ),
    _file_case(
        "npz_pickle_shape_mismatch",
        "sketch-rnn .npz whose pickled object array declares 200 items but holds 1 (segfaults numpy's np.load)",
        lambda: py2_object_npz(200),
        DuetgenInputError,
        (r"malformed pickled array", r"shape \(200,\) holds 1 items", r"re-save it"),
        suffix=".npz",
    ),
    _file_case(
        "ndjson_deep_nesting",
        "QuickDraw JSON nested 200,000 lists deep",
        deep_json,
        DuetgenInputError,
        (r"nested too deeply", r"expected QuickDraw strokes"),
        suffix=".ndjson",
    ),
    Case(
        "gallery_symlink_loops",
        "duetgen index on photos with symlink loops (dir cycle, self link, d1<->d2, "
        "a file link to itself) and a link to /dev/zero",
        make_symlink_loop_photos,
        run_index,
        None,
        (r"indexed 4 images", r"symlink loop", r"broken link or not a regular file"),
        seconds=30.0,
        extra_mb=600,
        imports=("duetgen.cli", "duetgen.gallery", *CKPT_IMPORTS),
    ),
    Case(
        "gallery_root_self_loop",
        "duetgen index on a photos folder that is a symlink to itself",
        make_self_loop_root,
        run_index,
        DuetgenInputError,
        (r"PHOTOS_DIR .* is a symlink loop",),
        seconds=10.0,
        imports=("duetgen.cli", "duetgen.gallery", *CKPT_IMPORTS),
    ),
    Case(
        "checkpoint_valid",
        "reference: a valid tiny encoder folder (config.json + safetensors), loaded",
        make_checkpoint,
        load_checkpoint,
        None,
        (),
        imports=CKPT_IMPORTS,
    ),
    Case(
        "checkpoint_pickle_bin",
        "encoder folder with config + safetensors + a malicious pytorch_model.bin",
        lambda r: make_checkpoint(r, pickle_name="pytorch_model.bin"),
        load_checkpoint,
        CheckpointError,
        (r"contains pickled files \['pytorch_model\.bin'\]", r"never unpickles", r"convert them to safetensors"),
        imports=CKPT_IMPORTS,
    ),
    Case(
        "checkpoint_pickle_only",
        "encoder folder whose only weights are a pickled .pt (no safetensors)",
        lambda r: make_checkpoint(r, pickle_name="model.pt", drop_safetensors=True),
        load_checkpoint,
        CheckpointError,
        (r"contains pickled files \['model\.pt'\]", r"convert them to safetensors"),
        imports=CKPT_IMPORTS,
    ),
    Case(
        "checkpoint_pickle_upper",
        "encoder folder with a pickle named WEIGHTS.PKL (upper case)",
        lambda r: make_checkpoint(r, pickle_name="WEIGHTS.PKL"),
        load_checkpoint,
        CheckpointError,
        (r"contains pickled files \['WEIGHTS\.PKL'\]", r"never unpickles"),
        imports=CKPT_IMPORTS,
    ),
    Case(
        "checkpoint_unexpected_keys",
        "encoder config.json with keys the class does not take",
        lambda r: make_checkpoint(r, cfg_update={"trust_remote_code": True, "auto_map": "evil.Model"}),
        load_checkpoint,
        CheckpointError,
        (r"has keys ComposedQueryEncoder does not take: \['auto_map', 'trust_remote_code'\]", r"remove them"),
        imports=CKPT_IMPORTS,
    ),
    Case(
        "checkpoint_pickle_and_keys",
        "encoder folder with both a pickle and unexpected config keys",
        lambda r: make_checkpoint(r, pickle_name="pytorch_model.pkl", cfg_update={"evil": 1}),
        load_checkpoint,
        CheckpointError,
        (r"contains pickled files \['pytorch_model\.pkl'\]", r"never unpickles"),
        imports=CKPT_IMPORTS,
    ),
    Case(
        "checkpoint_config_memory_bomb",
        "encoder config.json declaring a 10^8-word vocabulary (51 GB of floats)",
        lambda r: make_checkpoint(r, clip_update={"text_cfg": {"vocab_size": 100_000_000}}),
        load_checkpoint,
        CheckpointError,
        (r"far larger than its weights", r"restore the config\.json"),
        imports=CKPT_IMPORTS,
    ),
    Case(
        "checkpoint_config_deep_model",
        "encoder config.json declaring 100,000 transformer layers",
        lambda r: make_checkpoint(r, clip_update={"vision_cfg": {"layers": 100_000}}),
        load_checkpoint,
        CheckpointError,
        (r"far larger than its weights", r"restore the config\.json"),
        imports=CKPT_IMPORTS,
    ),
    Case(
        "checkpoint_config_mismatch",
        "encoder config.json with one layer fewer than its weights",
        lambda r: make_checkpoint(r, clip_update={"text_cfg": {"layers": 1}}),
        load_checkpoint,
        CheckpointError,
        (r"does not match its weights", r"not used by the config", r"restore the config\.json"),
        imports=CKPT_IMPORTS,
    ),
]

BY_NAME = {c.name: c for c in CASES}
