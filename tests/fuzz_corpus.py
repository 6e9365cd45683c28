"""Seed corpus, mutators and parser targets for fuzzing duetgen's input parsers.

Shared by ``tests/test_fuzz.py`` (hypothesis, a few dozen examples per parser) and ``benchmarks/fuzz_inputs.py``
(a seeded mutation loop, thousands of inputs per parser). Everything here drives the real parsers: no mocks.

A *target* is one parser fed one kind of file. Its ``run(data)`` writes ``data`` where the parser reads it (bytes
in memory, or one file of an otherwise valid folder) and calls the public entry point. An outcome is one of:

- ``parsed``: the parser returned;
- ``refused``: it raised one of the target's ``allowed`` duetgen errors, with a one-line message;
- ``crash``: any other exception, or a duetgen error whose message spans several lines.

Mutations are lists of ``Op`` tuples ``(kind, pos, arg, blob)`` applied by :func:`apply_ops`, so hypothesis can
draw and shrink them and the benchmark can draw them from a seeded ``random.Random``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from duetgen.errors import CheckpointError, DuetgenError, DuetgenInputError

# ---------------------------------------------------------------------------------------------------------------
# time and memory bounds for one example
# ---------------------------------------------------------------------------------------------------------------


class ExampleTimeout(BaseException):  # noqa: N818 - a BaseException, so no `except Exception` in duetgen hides it
    """Raised by :func:`time_limit` when one example runs too long (a hang)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`ExampleTimeout` in the main thread after ``seconds`` of wall time."""

    def on_alarm(signum, frame):
        raise ExampleTimeout(f"example ran over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def vm_size_bytes() -> int:
    """Current virtual memory size of this process (VmSize), in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss), in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def memory_limit(extra_bytes: int) -> Iterator[None]:
    """Cap the address space at its current size plus ``extra_bytes`` (soft RLIMIT_AS), restored afterwards.

    An example that tries to allocate past the cap gets a MemoryError (or torch's allocation error) instead of
    exhausting the machine; both count as crashes.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm_size_bytes() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ---------------------------------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------------------------------

Op = tuple[int, int, int, bytes]  # (kind, pos, arg, blob)

BINARY_OPS = (0, 1, 2, 3, 4, 5, 6, 7, 13)
TEXT_OPS = (*BINARY_OPS, 8, 9)
JSON_OPS = (*TEXT_OPS, 10, 11, 12)
N_OP_KINDS = 14

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x20, 0x0A, 0x3C, 0x3E, 0x22, 0x5B, 0x7B)
INTERESTING_INTS = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                    0xFFFFFFFF, 60000, 65535 * 65535)  # fmt: skip
INTERESTING_NUMBERS = ("0", "-0", "-1", "1", "1e308", "-1e308", "1e-320", "NaN", "Infinity", "-Infinity", "nan",
                       "inf", "99999999999999999999999", "2147483648", "4294967296", "1e9", "0.5", "-2147483649",
                       "1e400", ".", "-", "1e", "0x10")  # fmt: skip
INTERESTING_TOKENS = (b"<", b">", b"&", b"&amp;", b"&#0;", b"&#x110000;", b"]]>", b"<!--", b"-->", b'"', b"'", b"{",
                      b"}", b"[", b"]", b",", b":", b"null", b"\\u0000", b"\\ud800", b"\x00", b"\xff\xfe",
                      b"\r\n", b"<![CDATA[", b"<?xml ?>", b"<g>", b"</g>", b"<path d='M0 0'/>", b"\xc3",
                      b"\xe2\x82")  # fmt: skip
DEEP = 5000
JSON_VALUES: tuple = (None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 1e308, -1e308, 0.5, float("nan"),
                      float("inf"), "", "x", "0", "\u0000", [], {}, [[]], [[[]]], [0], [[0, 1]], [[[0, 1], [0, 1]]],
                      {"a": 1}, [None], ["x"], [[["a"], ["b"]]], [[[1e308, -1e308], [0, 1]]], "a" * 5000,
                      list(range(2000)), "DEEP")  # fmt: skip
_NUMBER_TOKEN = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _json_nodes(value, path=()):
    """(path, value) of every node of a parsed JSON document, depth first."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _json_nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _json_nodes(v, (*path, i))


def _json_value(arg: int):
    value = JSON_VALUES[arg % len(JSON_VALUES)]
    if value == "DEEP":
        return "DEEP"  # replaced by raw text after dumping (json.dumps would recurse)
    return value


def _json_mutate(doc, kind: int, pos: int, arg: int):
    """One structural mutation of a parsed JSON document; returns the new document."""
    nodes = list(_json_nodes(doc))
    path, node = nodes[pos % len(nodes)]
    if kind == 10:  # replace a node
        new = _json_value(arg)
        if not path:
            return new
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = new
    elif kind == 11:  # delete a key / element from a container node
        containers = [n for _, n in nodes if isinstance(n, (dict, list)) and n]
        if containers:
            c = containers[pos % len(containers)]
            if isinstance(c, dict):
                del c[list(c)[arg % len(c)]]
            else:
                del c[arg % len(c)]
    else:  # 12: add an unexpected key / element
        containers = [n for _, n in nodes if isinstance(n, (dict, list))]
        if containers:
            c = containers[pos % len(containers)]
            if isinstance(c, dict):
                c[f"unexpected_{arg % 7}"] = _json_value(arg // 7)
            else:
                c.insert(arg % (len(c) + 1), _json_value(arg // 7))
    return doc


def _dump_json(doc) -> bytes:
    text = json.dumps(doc)
    return text.replace('"DEEP"', "[" * DEEP + "]" * DEEP).encode()


def apply_ops(data: bytes, ops: list[Op], allowed: tuple[int, ...], seeds: list[bytes] = ()) -> bytes:
    """Apply mutation ``ops`` to ``data``; each op's kind is mapped into ``allowed`` (binary, text or JSON ops)."""
    buf = bytearray(data)
    for kind, pos, arg, blob in ops:
        kind = allowed[kind % len(allowed)]
        n = len(buf)
        if kind == 0 and n:  # flip one bit
            buf[pos % n] ^= 1 << (arg % 8)
        elif kind == 1 and n:  # set a byte
            buf[pos % n] = arg % 256
        elif kind == 2 and n:  # set a byte to an interesting value
            buf[pos % n] = INTERESTING_BYTES[arg % len(INTERESTING_BYTES)]
        elif kind == 3:  # insert bytes
            at = pos % (n + 1)
            buf[at:at] = blob or bytes([arg % 256]) * (1 + arg % 300)
        elif kind == 4 and n:  # delete a range
            at = pos % n
            del buf[at : at + 1 + arg % 64]
        elif kind == 5 and n:  # duplicate a range
            at = pos % n
            chunk = buf[at : at + 1 + arg % 256]
            buf[at:at] = chunk * (1 + (arg >> 8) % 4)
        elif kind == 6 and n:  # truncate
            del buf[pos % n :]
        elif kind == 7 and n >= 4:  # overwrite with an interesting integer, 2 or 4 bytes, either endianness
            value = INTERESTING_INTS[arg % len(INTERESTING_INTS)]
            fmt = ("<I", ">I", "<H", ">H")[(arg >> 4) % 4]
            packed = struct.pack(fmt, value & (0xFFFFFFFF if fmt.endswith("I") else 0xFFFF))
            at = pos % (n - len(packed) + 1)
            buf[at : at + len(packed)] = packed
        elif kind == 8:  # replace a number token with an interesting number
            matches = list(_NUMBER_TOKEN.finditer(bytes(buf)))
            if matches:
                m = matches[pos % len(matches)]
                buf[m.start() : m.end()] = INTERESTING_NUMBERS[arg % len(INTERESTING_NUMBERS)].encode()
        elif kind == 9:  # insert an interesting token
            at = pos % (n + 1)
            buf[at:at] = INTERESTING_TOKENS[arg % len(INTERESTING_TOKENS)]
        elif kind in (10, 11, 12):  # structural JSON mutation (of the document, or of one line of ndjson)
            text = bytes(buf)
            try:
                buf = bytearray(_dump_json(_json_mutate(json.loads(text), kind, pos, arg)))
                continue
            except (ValueError, RecursionError):
                pass
            lines = text.split(b"\n")
            li = pos % len(lines)
            try:
                doc = json.loads(lines[li])
                lines[li] = _dump_json(_json_mutate(doc, kind, pos // max(len(lines), 1), arg))
            except (ValueError, RecursionError):
                continue
            buf = bytearray(b"\n".join(lines))
        elif kind == 13 and seeds:  # splice in a range of another seed
            other = seeds[arg % len(seeds)]
            if other:
                start = (arg >> 8) % len(other)
                at = pos % (n + 1)
                buf[at:at] = other[start : start + 1 + (arg >> 4) % 512]
        if len(buf) > max(4_000_000, 2 * len(data)):  # keep examples small
            del buf[max(4_000_000, 2 * len(data)) :]
    return bytes(buf)


def random_ops(rng: random.Random, allowed: tuple[int, ...] = (), max_ops: int = 4) -> list[Op]:
    """Random mutation ops for the benchmark's mutation loop; for JSON inputs, half are structural edits only."""
    structural = [allowed.index(k) for k in (10, 11, 12) if k in allowed]
    only_structural = bool(structural) and rng.random() < 0.5
    return [
        (
            rng.choice(structural) if only_structural else rng.randrange(N_OP_KINDS),
            rng.randrange(2**31),
            rng.randrange(2**31),
            rng.randbytes(rng.choice((0, 0, 1, 4, 16))),
        )
        for _ in range(rng.randint(1, max_ops))
    ]


# ---------------------------------------------------------------------------------------------------------------
# seed corpus: small valid files of every kind
# ---------------------------------------------------------------------------------------------------------------


def _drawing(size=(40, 32), mode="L") -> Image.Image:
    im = Image.new("L", size, 255)
    d = ImageDraw.Draw(im)
    d.line([(4, 4), (size[0] - 5, size[1] - 6)], fill=0, width=3)
    d.ellipse([8, 8, 22, 20], outline=0, width=2)
    return im if mode == "L" else im.convert(mode)


def _save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kwargs)
    return b.getvalue()


def raster_seeds() -> list[bytes]:
    """PNG, JPEG, WebP, GIF, BMP, TIFF and PPM files of a small drawing, in several modes and codecs."""
    base = _drawing()
    rgba = base.convert("RGBA")
    rgba.putalpha(base.point(lambda v: 255 - v))
    pal = base.convert("P")
    pal.info["transparency"] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated
    frames = [_drawing(), _drawing().rotate(90), _drawing().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    deep = Image.fromarray(np.asarray(base).astype(np.uint16) * 257)  # I;16, the full 16-bit range
    seeds = [
        _save(base, "PNG"),
        _save(rgba, "PNG"),
        _save(pal, "PNG", transparency=255),
        _save(deep, "PNG"),
        _save(base.convert("1"), "PNG"),
        _save(frames[0], "PNG", save_all=True, append_images=frames[1:]),  # APNG
        _save(base, "JPEG", quality=80),
        _save(base.convert("RGB"), "JPEG", progressive=True, exif=exif.tobytes()),
        _save(base.convert("CMYK"), "JPEG"),
        _save(base.convert("RGB"), "WEBP", quality=70),
        _save(rgba, "WEBP", lossless=True),
        _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        _save(base.convert("RGB"), "BMP"),
        _save(base.convert("1"), "BMP"),
        _save(base, "TIFF"),
        _save(base.convert("RGB"), "TIFF", compression="tiff_lzw"),
        _save(base, "TIFF", compression="packbits"),
        _save(base.convert("1"), "TIFF", compression="group4"),
        _save(deep, "TIFF"),
        _save(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        _save(base.convert("RGB"), "PPM"),
        _save(base, "PPM"),
    ]
    return seeds


RASTER_MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"GIF87a", b"BM", b"II*\x00", b"MM\x00*",
                 b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"P6\n", b"P5\n", b"")  # fmt: skip

SVG_SEEDS = [
    b"""<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 80" width="100" height="80">
<g transform="translate(5,5) scale(0.9)" stroke="black" fill="none" stroke-width="2">
<path d="M10 10 L40 10 H60 V30 C60 40 70 40 80 30 S90 10 95 20 Q80 60 60 60 T20 70 A10 12 30 1 0 10 40 Z"/>
<path d="m5 5 l10 0 h5 v5 c1 2 3 4 5 6 s2 3 4 5 q1 1 2 2 t3 3 a5 5 0 0 1 5 5 z m20 0 10 10 20 0"/>
</g></svg>""",
    b"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">
<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="120mm" height="90mm">
<!-- a comment --><title>shapes</title>
<rect x="10%" y="10%" width="50%" height="30%" style="stroke:#000;fill:none;stroke-width:1.5"/>
<circle cx="60" cy="50" r="20" stroke="red" fill="none"/>
<ellipse cx="30" cy="70" rx="15" ry="5" fill="blue"/>
<line x1="0" y1="0" x2="100" y2="90" stroke="black"/>
<polyline points="10,80 20,70 30,80 40,70" stroke="black" fill="none"/>
<polygon points="70 10 90 10 80 30" fill="#123456"/>
<rect width="100%" height="100%" fill="white"/>
<g style="display:none"><path d="M0 0 L100 100"/></g>
<text x="5" y="5">ignored</text><![CDATA[ ignored ]]>
</svg>""",
    b"""<svg xmlns="http://www.w3.org/2000/svg" viewBox="-50 -50 100 100">
<a><switch><g transform="matrix(1 0.2 -0.2 1 3 4) rotate(30 5 5) skewX(10) skewY(-5)">
<path d="M-30-30L30 30M-30 30 30-30" stroke="#000" stroke-width="0.5pt"/>
<g transform="scale(2)" visibility="hidden"><path d="M0 0h10"/></g>
</g></switch></a></svg>""",
]
SVG_SEEDS.append(SVG_SEEDS[0].decode().encode("utf-16"))


def svg_seeds() -> list[bytes]:
    return list(SVG_SEEDS)


def _qd_record(word: str, drawing: list, **extra) -> dict:
    return {"word": word, "countrycode": "US", "timestamp": "2017-03-01 20:00:00.0", "recognized": True,
            "key_id": "5000000000000000", "drawing": drawing, **extra}  # fmt: skip


QD_SIMPLE = [[[0, 50, 100, 120], [0, 60, 10, 40]], [[10, 20, 200], [90, 95, 255]]]
QD_RAW = [[[0.5, 50.2, 100.9], [3.0, 60.1, 10.4], [0, 120, 240]], [[10, 20], [90, 95], [300, 350]]]


def quickdraw_seeds() -> list[bytes]:
    """QuickDraw ndjson (simplified and raw), a JSON list of drawings, a bare drawing, a pretty-printed record."""
    lines = [_qd_record("cat", QD_SIMPLE), _qd_record("cat", QD_RAW, recognized=False)]
    return [
        ("\n".join(json.dumps(r) for r in lines) + "\n").encode(),
        json.dumps([{"drawing": QD_SIMPLE}, {"drawing": QD_RAW}]).encode(),
        json.dumps(QD_SIMPLE).encode(),
        json.dumps(_qd_record("dog", QD_RAW), indent=2).encode(),
    ]


def _stroke3(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.zeros((n, 3), dtype=np.int16)
    s[:, :2] = rng.integers(-20, 20, size=(n, 2))
    s[rng.integers(0, n, size=max(1, n // 5)), 2] = 1
    return s


def _npz(**arrays) -> bytes:
    b = io.BytesIO()
    np.savez(b, **arrays)
    return b.getvalue()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    b = io.BytesIO()
    np.save(b, array, allow_pickle=allow_pickle)
    return b.getvalue()


def stroke3_seeds() -> list[bytes]:
    """sketch-rnn .npz (object arrays; one 3D array; one named array) and .npy files."""
    objs = {}
    for k, key in enumerate(("train", "valid", "test")):
        arr = np.empty(3, dtype=object)
        for i in range(3):
            arr[i] = _stroke3(12 + 3 * i, 10 * k + i)
        objs[key] = arr
    return [
        _npz(**objs),
        _npz(train=np.stack([_stroke3(10, s) for s in range(3)])),
        _npz(x=_stroke3(15, 7).astype(np.float32)),
        _npy(_stroke3(20, 3)),
        _npy(objs["train"], allow_pickle=True),
    ]


def random_array(rng: random.Random) -> np.ndarray:
    """A random in-memory image-like array: any small shape, many dtypes, extreme values."""
    ndim = rng.choice((0, 1, 2, 2, 3, 3, 3, 4))
    shape = tuple(rng.choice((0, 1, 2, 3, 4, 5, 17, 40)) for _ in range(ndim))
    if ndim == 3 and rng.random() < 0.7:
        shape = (*shape[:2], rng.choice((1, 3, 4)))
    dtype = rng.choice(("uint8", "uint16", "bool", "float16", "float32", "float64", "int32", "int64", "complex64",
                        "U3"))  # fmt: skip
    n = int(np.prod(shape)) if shape else 1
    g = np.random.default_rng(rng.randrange(2**32))
    if dtype == "U3":
        return np.full(shape, "ab", dtype=dtype)
    if dtype == "bool":
        return g.random(shape) < 0.3
    if dtype.startswith(("uint", "int")):
        info = np.iinfo(dtype)
        return g.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    values = g.random(n)
    special = rng.random()
    if special < 0.2:
        values[g.random(n) < 0.1] = rng.choice((np.nan, np.inf, -np.inf, -1.0, 2.0, 1e30))
    elif special < 0.3:
        values = values * 255
    return values.astype(dtype).reshape(shape)


def class_split_seeds() -> list[bytes]:
    return [json.dumps({"train": ["cat", "dog", "car_(sedan)"], "test": ["bell", "kite"]}).encode()]


def class_split_text_seeds() -> list[bytes]:
    return [b"# unseen classes\nbell\nkite  # comment\n\ncar_(sedan)\n"]


def qmul_split_seeds() -> list[bytes]:
    return [b"p0\nShoeV2_photo/p1.png\n# comment\n\\win\\path\\p2.jpg\n"]


def quickdraw_dataset_seeds() -> list[bytes]:
    lines = [_qd_record("cat", QD_SIMPLE), _qd_record("cat", QD_RAW, recognized=False), _qd_record("cat", QD_SIMPLE)]
    return [("\n".join(json.dumps(r) for r in lines) + "\n").encode()]


def quickdraw_npy_seeds() -> list[bytes]:
    bitmaps = np.zeros((4, 784), dtype=np.uint8)
    bitmaps[:, 100:400:7] = 255
    return [_npy(bitmaps), _npy(bitmaps.astype(np.float32) / 255)]


# ---------------------------------------------------------------------------------------------------------------
# generators: random documents that follow a format's grammar loosely (deeper than byte mutations reach)
# ---------------------------------------------------------------------------------------------------------------

_SVG_TAGS = ("g", "path", "path", "path", "rect", "circle", "ellipse", "line", "polyline", "polygon", "a", "switch",
             "text", "defs", "use", "svg", "image")  # fmt: skip
_NUMBERS = ("0", "1", "-1", "10", "50.5", "1e3", "-1e-3", "1e308", "-1e308", "1e-320", "NaN", "inf", "1e999", ".5",
            "5.", "+3", "007", "1e", "", "-", "2147483648")  # fmt: skip


def _num(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(_NUMBERS)
    return repr(rng.uniform(-200, 200)) if rng.random() < 0.7 else str(rng.randint(-(10**6), 10**6))


def _length_value(rng: random.Random) -> str:
    return _num(rng) + rng.choice(("", "", "px", "%", "mm", "em", "in", "pt", "q", " ", "%%"))


def _path_data(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 12)):
        cmd = rng.choice("MmLlHhVvCcSsQqTtAaZzX ")
        n = rng.choice((0, 1, 2, 2, 4, 6, 7, 14))
        args = [_num(rng) if cmd not in "Aa" or k % 7 not in (3, 4) else rng.choice("01012") for k in range(n)]
        parts.append(cmd + rng.choice((" ", ",", "")).join(args))
    return rng.choice((" ", "", ",")).join(parts)


def _transform(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(0, 3)):
        fn = rng.choice(("matrix", "translate", "scale", "rotate", "skewX", "skewY", "foo"))
        out.append(f"{fn}({', '.join(_num(rng) for _ in range(rng.choice((0, 1, 2, 3, 6, 7))))})")
    return " ".join(out)


def _svg_attrs(rng: random.Random, tag: str) -> str:
    keys = ("d", "points", "x", "y", "width", "height", "r", "rx", "ry", "cx", "cy", "x1", "y1", "x2", "y2",
            "transform", "stroke", "fill", "stroke-width", "style", "display", "visibility", "viewBox")  # fmt: skip
    attrs = {}
    for _ in range(rng.randint(0, 6)):
        k = rng.choice(keys)
        if k == "d":
            v = _path_data(rng)
        elif k == "points":
            v = " ".join(_num(rng) for _ in range(rng.randint(0, 9)))
        elif k == "transform":
            v = _transform(rng)
        elif k in ("stroke", "fill"):
            v = rng.choice(("black", "none", "white", "#fff", "red", "inherit", "url(#x)", "rgb(255, 255, 255)", ""))
        elif k == "style":
            v = ";".join(f"{rng.choice(keys[16:])}:{rng.choice(('none', 'black', _num(rng)))}" for _ in range(2))
        elif k == "display":
            v = rng.choice(("none", "inline", ""))
        elif k == "visibility":
            v = rng.choice(("hidden", "collapse", "visible"))
        elif k == "viewBox":
            v = " ".join(_num(rng) for _ in range(rng.choice((0, 2, 4, 4, 5))))
        else:
            v = _length_value(rng)
        attrs[k] = v.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;") if rng.random() < 0.98 else v
    return "".join(f' {k}="{v}"' for k, v in attrs.items())


def random_svg(rng: random.Random) -> bytes:
    """A random SVG document: nested groups and shapes with random geometry, transforms and paint."""

    def element(depth: int) -> str:
        tag = rng.choice(_SVG_TAGS)
        children = ""
        if tag in ("g", "a", "switch", "svg", "defs") and depth < rng.choice((2, 4, 8, 70)):
            children = "".join(element(depth + 1) for _ in range(rng.randint(0, 4 if depth < 8 else 1)))
        ns = ' xmlns="http://www.w3.org/2000/svg"' if rng.random() < 0.2 else ""
        return (
            f"<{tag}{ns}{_svg_attrs(rng, tag)}>{children}</{tag}>"
            if children or rng.random() < 0.3
            else (f"<{tag}{_svg_attrs(rng, tag)}/>")
        )

    root_attrs = _svg_attrs(rng, "svg")
    body = "".join(element(1) for _ in range(rng.randint(0, 6)))
    prolog = rng.choice(("", '<?xml version="1.0"?>\n', "<!-- c -->", '<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
                         '"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">'))  # fmt: skip
    text = f'{prolog}<svg xmlns="http://www.w3.org/2000/svg"{root_attrs}>{body}</svg>'
    return text.encode("utf-16" if rng.random() < 0.05 else "utf-8")


def _random_json(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 3 or r < 0.4:
        return _json_value(rng.randrange(len(JSON_VALUES) - 1)) if rng.random() < 0.5 else rng.uniform(-1e3, 1e3)
    if r < 0.8:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(("drawing", "word", "recognized", "x")): _random_json(rng, depth + 1) for _ in range(3)}


def random_quickdraw(rng: random.Random) -> bytes:
    """Random ndjson / JSON drawings: strokes of random lengths, types and values, and random JSON around them."""

    def coords(n: int) -> list:
        kind = rng.random()
        if kind < 0.7:
            return [rng.choice((rng.uniform(-300, 300), rng.randint(0, 255))) for _ in range(n)]
        if kind < 0.85:
            return [_json_value(rng.randrange(len(JSON_VALUES) - 1)) for _ in range(n)]
        return [rng.choice((1e308, -1e308, float("nan"), float("inf"), 10**400, "1", True)) for _ in range(n)]

    def drawing():
        if rng.random() < 0.15:
            return _random_json(rng)
        strokes = []
        for _ in range(rng.randint(0, 5)):
            n = rng.choice((0, 1, 2, 3, 10))
            width = rng.choice((2, 2, 3, 3, 1, 4))
            stroke = [coords(n if rng.random() < 0.9 else rng.randint(0, 4)) for _ in range(width)]
            strokes.append(stroke if rng.random() < 0.95 else _random_json(rng))
        return strokes

    records = [{"word": rng.choice(("cat", "", None, 3, ["x"])), "recognized": rng.choice((True, False, None, "no")),
                "drawing": drawing()} for _ in range(rng.randint(1, 3))]  # fmt: skip
    style = rng.random()
    if style < 0.6:
        return "\n".join(json.dumps(r) for r in records).encode()
    if style < 0.8:
        return json.dumps([{"drawing": r["drawing"]} for r in records]).encode()
    return json.dumps(records[0]["drawing"]).encode()


def _object_array(*items: np.ndarray) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


_OBJECT_ARRAYS = (
    _object_array(_stroke3(12, 0), _stroke3(5, 1), _stroke3(30, 2)),
    _object_array(_stroke3(4, 3).astype(np.float32)),
    _object_array(_stroke3(6, 4), np.zeros((2, 3), dtype=">i4"), np.ones((1, 3), dtype=np.uint8)),
)


def random_stroke3(rng: random.Random) -> bytes:
    """Random sketch-rnn files: .npy / .npz of random shapes and dtypes, object arrays of random contents."""
    g = np.random.default_rng(rng.randrange(2**32))

    def array():
        kind = rng.random()
        if kind < 0.5:
            shape = rng.choice(((rng.randint(0, 30), 3), (rng.randint(0, 3), rng.randint(0, 12), 3), (5,), (4, 2),
                                (2, 3, 3, 1), ()))  # fmt: skip
            dtype = rng.choice(("int16", "int8", "uint8", "float32", "float64", "float16", "bool", "int64", "U2",
                                "complex64"))  # fmt: skip
            if dtype == "U2":
                return np.full(shape, "1", dtype=dtype)
            values = g.normal(0, rng.choice((1, 30, 1e4, 1e300)), size=shape)
            if rng.random() < 0.2 and values.size:
                values.flat[g.integers(0, values.size)] = rng.choice((np.nan, np.inf, -np.inf))
            with np.errstate(all="ignore"):
                return values.astype(dtype)
        arr = np.empty(rng.randint(0, 4), dtype=object)
        for i in range(len(arr)):
            arr[i] = rng.choice((_stroke3(rng.randint(1, 20), i), np.zeros((3, 2)), np.array(["a", "b", "c"]),
                                 np.empty((0, 3)), np.full((4, 3), np.nan)))  # fmt: skip
        return arr

    if rng.random() < 0.3:  # a mutated object-array payload, zipped afresh (a mutation inside a zip fails its CRC)
        payload = apply_ops(_npy(rng.choice(_OBJECT_ARRAYS), allow_pickle=True), random_ops(rng), BINARY_OPS)
        b = io.BytesIO()
        with zipfile.ZipFile(b, "w") as z:
            z.writestr(rng.choice(("train.npy", "x.npy")), payload)
        return b.getvalue()
    if rng.random() < 0.3:
        return _npy(array(), allow_pickle=True)
    keys = rng.sample(("train", "valid", "test", "x", "y"), rng.randint(0, 3))
    b = io.BytesIO()
    np.savez(b, **{k: array() for k in keys}) if keys else np.savez(b)
    return b.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One parser fed one kind of input.

    Attributes:
        name: short name (the table row).
        seeds: valid inputs that the mutations start from.
        ops: the op kinds that make sense for this input (binary, text or JSON).
        run: parses one input (bytes); its return value is ignored.
        allowed: the exception types that count as a clean refusal.
        random_prefixes: for pure random inputs, magic prefixes to put in front of random bytes (None: no random
            inputs, only mutations).
        generate: makes a random document of the format from a ``random.Random`` (None: none).
        cost: rough relative cost of one example (the test divides its example budget by it).
    """

    name: str
    seeds: list[bytes]
    ops: tuple[int, ...]
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...] = (DuetgenInputError,)
    random_prefixes: tuple[bytes, ...] | None = None
    generate: Callable[[random.Random], bytes] | None = None
    cost: float = 1.0
    notes: str = ""


@dataclass
class Outcome:
    kind: str  # parsed, refused, crash
    error: BaseException | None = None
    detail: str = ""


def classify(target: Target, data: bytes, timeout: float = 20.0) -> Outcome:
    """Run ``target`` on ``data`` under a time limit and classify the outcome."""
    try:
        with time_limit(timeout):
            target.run(data)
    except ExampleTimeout as err:
        return Outcome("crash", err, f"hang: {err}")
    except target.allowed as err:
        message = str(err)
        if "\n" in message.strip() or not message.strip():
            return Outcome("crash", err, f"{type(err).__name__} with a multi-line or empty message: {message!r:.300}")
        return Outcome("refused", err, f"{type(err).__name__}: {message}")
    except MemoryError as err:
        return Outcome("crash", err, "MemoryError (over the per-example memory cap)")
    except Exception as err:  # noqa: BLE001 - the point of fuzzing
        return Outcome("crash", err, f"{type(err).__name__}: {str(err)[:300]}")
    return Outcome("parsed")


@dataclass
class Workspace:
    """Folders the folder-based targets write their one mutated file into, built once per session."""

    root: Path
    encoder: object = None
    _n: int = field(default=0)

    def fresh(self, name: str) -> Path:
        self._n += 1
        d = self.root / f"{name}-{os.getpid()}-{self._n}"
        d.mkdir(parents=True)
        return d

    def clean(self) -> None:
        for p in self.root.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()


def _tiny_encoder():
    import torch

    from duetgen import ComposedQueryEncoder
    from duetgen.backbones import get_clip_config

    torch.manual_seed(0)
    return ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny").eval()


def _tiny_pngs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        im = _drawing((36 + i, 30)).convert("RGB")
        p = folder / f"p{i}.png"
        im.save(p)
        out.append(p)
    return out


def build_targets(base: str | os.PathLike, names: list[str] | None = None) -> tuple[dict[str, Target], Workspace]:
    """The fuzz targets, with their fixtures (a gallery, a checkpoint folder...) built under ``base``."""
    from duetgen.sketch_input import read_sketch

    base = Path(base)
    ws = Workspace(base / "work")
    ws.root.mkdir(parents=True, exist_ok=True)
    targets: dict[str, Target] = {}

    def want(name: str) -> bool:
        return names is None or name in names

    # -- sketch_input: bytes in memory, sniffed by content -------------------------------------------------------
    def sketch_bytes(data: bytes):
        return read_sketch(data, size=32)

    targets["raster"] = Target("raster", raster_seeds(), BINARY_OPS, sketch_bytes, random_prefixes=RASTER_MAGICS)
    targets["svg"] = Target(
        "svg", svg_seeds(), TEXT_OPS, sketch_bytes, random_prefixes=(b"<svg>", b"<?xml", b"<"), generate=random_svg
    )
    targets["quickdraw"] = Target(
        "quickdraw",
        quickdraw_seeds(),
        JSON_OPS,
        sketch_bytes,
        random_prefixes=(b"{", b"[", b'{"drawing":'),
        generate=random_quickdraw,
    )
    targets["stroke3"] = Target(
        "stroke3",
        stroke3_seeds(),
        BINARY_OPS,
        sketch_bytes,
        random_prefixes=(b"PK\x03\x04", b"\x93NUMPY\x01\x00"),
        generate=random_stroke3,
    )

    # -- sketch_input: in-memory arrays and tensors (the data is an .npy of the array) ----------------------------
    def sketch_array(data: bytes):
        import torch

        array = np.load(io.BytesIO(data), allow_pickle=False)
        read_sketch(array, size=32)
        if array.dtype.kind in "biuf" and array.dtype != np.uint16:
            read_sketch(torch.from_numpy(np.ascontiguousarray(array)), size=32)

    array_seeds = [_npy(np.asarray(_drawing())), _npy(np.asarray(_drawing().convert("RGBA"))),
                   _npy(np.asarray(_drawing(), dtype=np.float32) / 255)]  # fmt: skip
    targets["array"] = Target(
        "array",
        array_seeds,
        (),
        sketch_array,
        generate=lambda rng: _npy(random_array(rng)),
        notes="random arrays, not mutations",
    )

    # -- datasets ------------------------------------------------------------------------------------------------
    if want("quickdraw_dataset") or want("quickdraw_npy"):
        from duetgen.datasets import QuickDrawDataset

        def quickdraw_dataset(data: bytes):
            root = ws.fresh("qd")
            (root / "cat.ndjson").write_bytes(data)
            (root / "dog.ndjson").write_bytes(quickdraw_dataset_seeds()[0].replace(b'"cat"', b'"dog"'))
            for recognized_only in (False, True):
                ds = QuickDrawDataset(root, max_per_class=3, image_size=32, recognized_only=recognized_only)
                for i in range(len(ds)):
                    ds[i]
                    ds.strokes(i)
                QuickDrawDataset(root, image_size=32, render=False)[0]

        def quickdraw_npy(data: bytes):
            root = ws.fresh("qdnpy")
            (root / "full_numpy_bitmap_cat.npy").write_bytes(data)
            ds = QuickDrawDataset(root, file_format="npy", max_per_class=3)
            for i in range(len(ds)):
                ds[i]

        targets["quickdraw_dataset"] = Target("quickdraw_dataset", quickdraw_dataset_seeds(), JSON_OPS,
                                              quickdraw_dataset, generate=random_quickdraw, cost=2.0)  # fmt: skip
        targets["quickdraw_npy"] = Target("quickdraw_npy", quickdraw_npy_seeds(), BINARY_OPS, quickdraw_npy)

    if want("class_split"):
        from duetgen.datasets import load_class_split

        def class_split(data: bytes):
            d = ws.fresh("split")
            json_like = data.lstrip()[:1] in (b"{", b"[")  # a JSON split file, else one class per line
            path = d / ("split.json" if json_like else "split.txt")
            path.write_bytes(data)
            load_class_split(path, classes=None if json_like else ["cat", "dog", "bell", "kite"])

        seeds = class_split_seeds() + class_split_text_seeds()
        targets["class_split"] = Target("class_split", seeds, JSON_OPS, class_split)

    if want("dataset_images") or want("qmul_split"):
        from duetgen.datasets import QMULDataset, SketchyDataset

        def dataset_images(data: bytes):
            root = ws.fresh("sketchy")
            (root / "sketch" / "cat").mkdir(parents=True)
            (root / "photo" / "cat").mkdir(parents=True)
            (root / "sketch" / "cat" / "p0-1.png").write_bytes(data)
            (root / "photo" / "cat" / "p0.jpg").write_bytes(data)
            ds = SketchyDataset(root)
            ds[0]

        targets["dataset_images"] = Target("dataset_images", raster_seeds(), BINARY_OPS, dataset_images,
                                           random_prefixes=RASTER_MAGICS)  # fmt: skip
        qmul_template = base / "qmul_template"
        if not qmul_template.exists():
            _tiny_pngs(qmul_template / "ShoeV2_photo", 3)
            sk = qmul_template / "ShoeV2_sketch"
            sk.mkdir()
            for i in range(3):
                shutil.copy(qmul_template / "ShoeV2_photo" / f"p{i}.png", sk / f"p{i}_1.png")
            (qmul_template / "sketch_train.txt").write_text("p0_1\np1_1\np2_1\n")

        def qmul_split(data: bytes):
            root = ws.fresh("qmul")
            for sub in ("ShoeV2_photo", "ShoeV2_sketch"):
                os.symlink(qmul_template / sub, root / sub)
            (root / "photo_train.txt").write_bytes(data)
            shutil.copy(qmul_template / "sketch_train.txt", root / "sketch_train.txt")
            ds = QMULDataset(root, split="train")
            ds[0]
            QMULDataset(root, split=None, split_file=root / "photo_train.txt", strict=False)

        targets["qmul_split"] = Target("qmul_split", qmul_split_seeds(), TEXT_OPS, qmul_split)

    # -- world groups cache (npz + JSON side file) ----------------------------------------------------------------
    if want("world_groups"):
        from duetgen.world_dataset import WorldGroups, build_world_groups

        wg_file = base / "world" / "groups.npz"
        if not wg_file.exists():
            build_world_groups(2, seed=0, size=16, progress=False).save(wg_file)

        def world_groups(data: bytes):
            d = ws.fresh("world")
            shutil.copy(wg_file, d / "groups.npz")
            (d / "groups.json").write_bytes(data)
            groups = WorldGroups.load(d / "groups.npz")
            for g in range(len(groups)):
                groups.words(g, 0)
                groups.caption(g, 1, 1)

        targets["world_groups"] = Target("world_groups", [wg_file.with_suffix(".json").read_bytes()], JSON_OPS,
                                         world_groups, notes="duetgen/world_dataset.py")  # fmt: skip

    # -- gallery folders (one file mutated) -----------------------------------------------------------------------
    gallery_files = ("manifest.json", "items.jsonl", "embeddings.npy", "index.faiss", "regions.npy")
    if any(want(f"gallery_{f.split('.')[0]}") for f in gallery_files):
        import torch

        from duetgen.gallery import Gallery

        if ws.encoder is None:
            ws.encoder = _tiny_encoder()
        gdir = base / "gallery"
        if not (gdir / "manifest.json").is_file():
            photos = _tiny_pngs(base / "photos", 5)
            Gallery.build([str(p) for p in photos], ws.encoder, gdir, num_workers=0, progress=False, regions=True)
        query = torch.nn.functional.normalize(torch.randn(2, ws.encoder.embed_dim), dim=-1)

        legacy_manifest = json.loads((gdir / "manifest.json").read_bytes())
        legacy_manifest["index"].pop("sha256", None)  # as saved before index.faiss had a checksum
        legacy_manifest = json.dumps(legacy_manifest).encode()

        def open_and_search(d: Path):
            g = Gallery.open(d, ws.encoder)
            g.search(query, k=3)
            g.search(query[0], k=2)
            if g.regions is not None:
                g.search(query, k=2, regions=True)

        def gallery_target(file: str):
            def run(data: bytes):
                folders = [ws.fresh("gallery")]
                if file == "index.faiss":  # a checksummed gallery refuses it; a legacy one lets faiss parse it
                    folders.append(ws.fresh("gallery"))
                    (folders[1] / "manifest.json").write_bytes(legacy_manifest)
                for d in folders:
                    for f in gallery_files:
                        if f != file and not (d / f).exists():
                            os.symlink(gdir / f, d / f)
                    (d / file).write_bytes(data)
                refusals = []
                for d in folders:
                    try:
                        open_and_search(d)
                    except DuetgenError as err:
                        refusals.append(err)
                if refusals:  # a multi-line message first, so classify() sees it
                    raise next((e for e in refusals if "\n" in str(e).strip()), refusals[-1])

            return run

        for f in gallery_files:
            name = f"gallery_{f.split('.')[0]}"
            ops = JSON_OPS if f.endswith(("json", "jsonl")) else BINARY_OPS
            targets[name] = Target(name, [(gdir / f).read_bytes()], ops, gallery_target(f),
                                   allowed=(DuetgenError,), cost=1.5, notes="duetgen/gallery.py")  # fmt: skip

    # -- checkpoint folders: config.json and the safetensors weights ----------------------------------------------
    if want("checkpoint_config") or want("checkpoint_weights"):
        from duetgen import load_encoder

        if ws.encoder is None:
            ws.encoder = _tiny_encoder()
        cdir = base / "checkpoint"
        if not (cdir / "config.json").is_file():
            ws.encoder.save_pretrained(cdir, safe_serialization=True)
        weights = next(cdir.glob("*.safetensors"))

        def checkpoint_config(data: bytes):
            d = ws.fresh("ckpt")
            os.symlink(weights, d / weights.name)
            (d / "config.json").write_bytes(data)
            load_encoder(d)

        def checkpoint_weights(data: bytes):
            d = ws.fresh("ckptw")
            shutil.copy(cdir / "config.json", d / "config.json")
            (d / weights.name).write_bytes(data)
            load_encoder(d)

        targets["checkpoint_config"] = Target("checkpoint_config", [(cdir / "config.json").read_bytes()], JSON_OPS,
                                              checkpoint_config, allowed=(CheckpointError,), cost=3.0)  # fmt: skip
        targets["checkpoint_weights"] = Target("checkpoint_weights", [weights.read_bytes()], BINARY_OPS,
                                               checkpoint_weights, allowed=(CheckpointError,), cost=3.0)  # fmt: skip

    if names is not None:
        targets = {k: v for k, v in targets.items() if k in names}
    return targets, ws


def default_base() -> Path:
    return Path(tempfile.mkdtemp(prefix="duetgen-fuzz-"))
