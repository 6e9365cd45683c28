"""The studio's logic, free of Streamlit: configuration, folder guards, input reading, queries, search, generation.

``apps/studio.py`` draws the page and calls these functions; tests and the latency script call them directly. Only
duetgen's public API is used (``duetgen``, ``duetgen.pipelines``, ``duetgen.embedded``, ``duetgen.world``).

Configuration comes from environment variables, which ``duetgen studio`` sets from its flags:

* ``DUETGEN_STUDIO_MODEL``: a pipeline folder (``model_index.json``) or an encoder folder (``config.json``);
  unset: the embedded default.
* ``DUETGEN_STUDIO_GALLERY``: a gallery folder built with ``duetgen index``; unset: the shipped sample gallery.
* ``DUETGEN_STUDIO_SCENE_GALLERY``: a gallery built with ``duetgen index --regions``; unset: procedural demo scenes
  built on first use into the cache folder.
* ``DUETGEN_STUDIO_ALLOW_DIRS``: folders (``os.pathsep``-separated) that paths typed into the studio may point
  into; unset: the repository's ``samples/`` and the current directory. The folders configured above and the
  cache folder are always allowed.
* ``DUETGEN_STUDIO_CACHE``: where demo scene galleries are built (default ``~/.cache/duetgen/studio``).
* ``DUETGEN_STUDIO_SCENES``: number of demo scenes (default 48).
* ``DUETGEN_STUDIO_MAX_UPLOAD_MB``: the largest file the studio accepts (default 10 MB).

Confinement: a folder typed into the studio (model, gallery, scene gallery) is resolved (``~``, ``..`` and every
symlink) and must lie inside an allowed folder, and so must everything inside it, symlinks included
(:func:`allowed_path`); gallery photos outside the allowed folders are not shown (:func:`result_image`). Uploads are
limited in size, extension and content (:func:`check_upload`). ``docs/limits.md`` lists every limit.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import duetgen
from duetgen import DuetgenError, DuetgenInputError, Gallery, SearchResult, SketchLimits
from duetgen.embedded import GALLERY_DIR, PIPELINE_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "samples"

DEFAULT_MAX_UPLOAD_MB = 10
MAX_PATH_CHARS = 4096  # a typed folder path longer than this is refused before it is resolved
MAX_FOLDER_ENTRIES = 20_000  # entries of a typed model / gallery folder checked for symlinks leading outside


def max_upload_mb() -> int:
    """The upload limit in MB: ``DUETGEN_STUDIO_MAX_UPLOAD_MB`` (``duetgen studio --max-upload-mb``), default 10."""
    raw = os.environ.get("DUETGEN_STUDIO_MAX_UPLOAD_MB", "").strip()
    try:
        value = int(raw) if raw else DEFAULT_MAX_UPLOAD_MB
    except ValueError:
        return DEFAULT_MAX_UPLOAD_MB
    return value if value >= 1 else DEFAULT_MAX_UPLOAD_MB


def upload_limits() -> SketchLimits:
    """Sketch limits for uploads: the library's (``DUETGEN_MAX_PIXELS``... of :mod:`duetgen.limits`) with the file
    size capped at the upload limit."""
    from dataclasses import replace

    base = duetgen.limits.sketch_limits()  # the public module duetgen.limits (docs/limits.md)
    return replace(base, max_file_bytes=min(base.max_file_bytes, max_upload_mb() * 1024 * 1024))


MAX_UPLOAD_MB = max_upload_mb()  # as the studio process was started (streamlit's own upload limit)
MAX_PIXELS = upload_limits().max_pixels
LIMITS = upload_limits()
SKETCH_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "svg", "json", "ndjson", "npz", "npy")
PHOTO_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
# what a file of each accepted extension starts with (checked on upload: a renamed file is refused)
_MAGIC = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpg": (b"\xff\xd8\xff",),
    "jpeg": (b"\xff\xd8\xff",),
    "gif": (b"GIF87a", b"GIF89a"),
    "bmp": (b"BM",),
    "tif": (b"II*\x00", b"MM\x00*"),
    "tiff": (b"II*\x00", b"MM\x00*"),
    "npz": (b"PK\x03\x04", b"PK\x05\x06"),
    "npy": (b"\x93NUMPY",),
}
SCHEDULERS = {  # label -> diffusers class; all share the DDPM family's config
    "DDPM": "DDPMScheduler",
    "DDIM": "DDIMScheduler",
    "DPM-Solver++": "DPMSolverMultistepScheduler",
    "Euler": "EulerDiscreteScheduler",
    "Euler ancestral": "EulerAncestralDiscreteScheduler",
}
QUERY_MODES = ("Sketch + words", "Sketch only", "Words only")
OUTLINE = (230, 30, 60)


# ---------------------------------------------------------------------------------------------------------------
# configuration and folder guards
# ---------------------------------------------------------------------------------------------------------------


def _env_path(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@dataclass
class StudioConfig:
    """What the studio was started with (see the module docstring for the environment variables)."""

    model: str | None = None
    gallery: str | None = None
    scene_gallery: str | None = None
    allow_dirs: list[Path] = field(default_factory=list)
    cache_dir: Path = Path("~/.cache/duetgen/studio").expanduser()
    n_scenes: int = 48

    @classmethod
    def from_env(cls) -> StudioConfig:
        model, gallery = _env_path("DUETGEN_STUDIO_MODEL"), _env_path("DUETGEN_STUDIO_GALLERY")
        scene_gallery = _env_path("DUETGEN_STUDIO_SCENE_GALLERY")
        cache = Path(_env_path("DUETGEN_STUDIO_CACHE") or "~/.cache/duetgen/studio").expanduser()
        raw = os.environ.get("DUETGEN_STUDIO_ALLOW_DIRS")
        dirs = [d for d in raw.split(os.pathsep) if d.strip()] if raw else [str(SAMPLES_DIR), os.getcwd()]
        dirs += [p for p in (model, gallery, scene_gallery) if p] + [str(cache)]
        try:
            n_scenes = max(4, min(500, int(os.environ.get("DUETGEN_STUDIO_SCENES", "48"))))
        except ValueError:
            n_scenes = 48
        allow = []
        for d in dirs:
            p = Path(os.path.realpath(os.path.expanduser(d)))
            if p not in allow:
                allow.append(p)
        return cls(model, gallery, scene_gallery, allow, cache, n_scenes)


def is_inside(path: str | os.PathLike, folders: list[Path]) -> bool:
    """Whether ``path``, with ``~``, ``..`` and every symlink resolved, is one of ``folders`` or inside one."""
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError):  # e.g. an embedded NUL byte
        return False
    for f in folders:
        f = Path(os.path.realpath(f))
        if real == f or f in real.parents:
            return True
    return False


def _outside(text: str, config: StudioConfig) -> DuetgenInputError:
    dirs = ", ".join(str(d) for d in config.allow_dirs)
    return DuetgenInputError(
        f"'{text}' is outside the folders the studio may read ({dirs}); start it with --allow-dir to add one"
    )


def check_folder_confined(path: Path, config: StudioConfig, text: str) -> None:
    """Refuses a folder holding a symlink (at any depth) that leads outside the allowed folders: the studio would
    otherwise read what it points to when it loads the model or gallery."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            count += 1
            if count > MAX_FOLDER_ENTRIES:
                raise DuetgenInputError(f"'{text}' holds over {MAX_FOLDER_ENTRIES:,} files; pick the model or "
                                        "gallery folder itself")  # fmt: skip
            entry = os.path.join(dirpath, name)
            if os.path.islink(entry) and not is_inside(entry, config.allow_dirs):
                rel = os.path.relpath(entry, path)
                raise DuetgenInputError(
                    f"'{text}' holds a link ({rel}) to a place outside the folders the studio may read; "
                    "start it with --allow-dir to add that place"
                )


def allowed_path(text: str, config: StudioConfig, what: str) -> Path:
    """A folder typed into the studio, resolved (``~``, ``..``, symlinks) and checked against the allowed folders,
    with every symlink inside it checked too.

    Raises:
        DuetgenInputError: empty, too long, outside the allowed folders (itself or through a link inside it),
            missing or not a folder.
    """
    text = (text or "").strip()
    if not text:
        raise DuetgenInputError(f"type the path of a {what} folder")
    if len(text) > MAX_PATH_CHARS or "\x00" in text:
        raise DuetgenInputError(f"that {what} folder path is not a usable path (too long or with a NUL character)")
    path = Path(os.path.realpath(os.path.expanduser(text)))
    if not is_inside(path, config.allow_dirs):
        raise _outside(text, config)
    if not path.exists():
        raise DuetgenInputError(f"{what} folder '{text}' does not exist")
    if not path.is_dir():
        raise DuetgenInputError(f"'{text}' is a file, not a {what} folder")
    check_folder_confined(path, config, text)
    return path


# ---------------------------------------------------------------------------------------------------------------
# models and galleries
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Models:
    """The encoder, and the generation pipeline around the same encoder when the model folder has one."""

    encoder: duetgen.ComposedQueryEncoder
    pipe: object | None
    source: str
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time (scheduler swap)
    default_scheduler: dict | None = None


def load_models(model: str | os.PathLike | None) -> Models:
    """The embedded default (``None``), a pipeline folder or an encoder folder.

    Raises:
        DuetgenError: the folder is not a model (the message says what was expected), or the embedded default is
            missing from this install.
    """
    from duetgen.pipelines import load_pipeline

    if model is None:
        if (PIPELINE_DIR / "model_index.json").is_file():
            pipe = load_pipeline(unet_dtype="auto")
            source = "embedded default"
        else:
            encoder = duetgen.load_encoder()  # raises CheckpointError naming what is missing
            return Models(encoder, None, "embedded default (encoder only)")
    else:
        path = Path(model)
        if (path / "model_index.json").is_file():
            pipe = load_pipeline(path, unet_dtype="auto")
            source = str(path)
        elif (path / "config.json").is_file():
            return Models(duetgen.load_encoder(path), None, str(path))
        else:
            raise DuetgenInputError(
                f"'{path}' is not a model folder: expected model_index.json (a pipeline saved with save_pretrained) "
                "or config.json (an encoder)"
            )
    pipe.set_progress_bar_config(disable=True)
    pipe.encoder.eval()
    pipe.enable_unet_jit()  # a long-lived process: each batch shape is traced once, every later step is faster
    return Models(pipe.encoder, pipe, source, default_scheduler=dict(pipe.scheduler.config))


def open_gallery(path: str | os.PathLike, encoder) -> Gallery:
    """Opens a gallery folder for ``encoder`` (refusing a gallery built by another encoder)."""
    gallery = Gallery.open(path, encoder)
    if len(gallery) == 0:
        raise DuetgenInputError(f"gallery '{path}' is empty; add photos with 'duetgen index'")
    gallery.index  # noqa: B018 - build or load the FAISS index now, not on the first query
    return gallery


def sample_gallery_dir() -> Path:
    return GALLERY_DIR


def gallery_image_roots(gallery: Gallery) -> list[Path]:
    """Where a trusted gallery's photos live: its folder and the folder it was indexed from."""
    roots = [Path(os.path.realpath(gallery.path))] if gallery.path is not None else []
    root = gallery.manifest.get("root")
    if root:
        roots.append(Path(os.path.realpath(root)))
    return roots


# ---------------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------------


def check_upload(name: str, data: bytes, types: tuple[str, ...]) -> None:
    """Refuses uploads over the size limit (``DUETGEN_STUDIO_MAX_UPLOAD_MB``), of a type outside ``types`` (by file
    name), or whose content is not what the name says (a renamed file: checked by its first bytes)."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext not in types:
        raise DuetgenInputError(f"'{name}' is not an accepted file type; use one of: {', '.join(types)}")
    limit = max_upload_mb()
    if len(data) > limit * 1024 * 1024:
        raise DuetgenInputError(
            f"'{name}' is {len(data) / 1e6:.1f} MB, over the {limit} MB upload limit "
            "(duetgen studio --max-upload-mb changes it)"
        )
    if not data:
        raise DuetgenInputError(f"'{name}' is empty (0 bytes)")
    head = bytes(data[:512])
    if ext in _MAGIC:
        ok = head.startswith(_MAGIC[ext])
    elif ext == "webp":
        ok = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    elif ext == "svg":
        ok = b"<svg" in bytes(data[:65536]).lower()
    else:  # json / ndjson: text of JSON objects or arrays
        ok = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"[")
    if not ok:
        raise DuetgenInputError(f"'{name}' is not a {ext.upper()} file inside (its content does not match its name)")


def sketch_size(models: Models) -> int:
    """Side at which sketches are read: what the encoder and the generator need."""
    size = models.encoder.image_size
    if models.pipe is not None:
        size = max(size, models.pipe.sample_size)
    return max(size, 64)


def read_sketch_source(source, models: Models, name: str = "sketch") -> torch.Tensor:
    """Any sketch source (bytes of a file, a path, a PIL image) -> (3, S, S) in [0, 1], framed as the model expects.

    Raises:
        DuetgenInputError: the library's one-line message, with the upload's name in place of ``<bytes>``.
    """
    fit = models.encoder.config.sketch_fit
    try:
        return duetgen.load_sketch(source, fit=fit, size=sketch_size(models), limits=upload_limits())
    except DuetgenInputError as err:
        raise DuetgenInputError(str(err).replace("'<bytes>'", f"'{name}'").replace("'<image>'", f"'{name}'")) from err


def canvas_has_strokes(json_data: dict | None) -> bool:
    return bool(json_data and json_data.get("objects"))


def canvas_image(image_data: np.ndarray) -> Image.Image:
    """The canvas's RGBA pixels over a white background, as a greyscale image."""
    rgba = np.asarray(image_data)
    if rgba.ndim != 3 or rgba.shape[-1] not in (3, 4):
        raise DuetgenInputError(f"the canvas sent an image of shape {rgba.shape}; draw again")
    rgba = rgba.astype(np.float32)
    rgb, alpha = rgba[..., :3], rgba[..., 3:4] / 255.0 if rgba.shape[-1] == 4 else 1.0
    grey = (rgb * alpha + 255.0 * (1 - alpha)).mean(-1)
    return Image.fromarray(grey.clip(0, 255).astype(np.uint8), "L")


def read_photo(source: bytes | str | os.PathLike, name: str = "photo") -> Image.Image:
    """A photo file (bytes or path) -> RGB image, with the upload limits checked before decoding."""
    return duetgen.read_photo(source, name, limits=upload_limits())


def square_photo(photo: Image.Image) -> Image.Image:
    """The photo centre-padded to a square with the median colour of its border, so the padding reads as
    background (the outline extraction and the attribute reading both see a square image)."""
    if photo.width == photo.height:
        return photo
    a = np.asarray(photo.convert("RGB"))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])  # (N, 3)
    side = max(photo.size)
    square = Image.new("RGB", (side, side), tuple(int(v) for v in np.median(border, axis=0)))
    square.paste(photo, ((side - photo.width) // 2, (side - photo.height) // 2))
    return square


def looks_like_photo(image: Image.Image) -> bool:
    """Colourful or mostly not-white: a photo rather than black ink on white."""
    small = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32) / 255.0
    coloured = ((small.max(-1) - small.min(-1)) > 0.15).mean()  # share of clearly coloured pixels
    light = (small.mean(-1) > 0.8).mean()
    return bool(coloured > 0.02 or light < 0.5)


# ---------------------------------------------------------------------------------------------------------------
# queries and search
# ---------------------------------------------------------------------------------------------------------------


def compose_query(
    encoder, sketch: torch.Tensor | None, words: str | None, mode: str = QUERY_MODES[0], return_states: bool = False
):
    """The composed query (1, D) for a sketch (3, S, S), words, or both, as ``mode`` (one of QUERY_MODES) says.

    Raises:
        DuetgenInputError: the mode needs an input that is missing.
    """
    words = (words or "").strip() or None
    if mode == "Sketch only":
        words = None
        if sketch is None:
            raise DuetgenInputError("'Sketch only' needs a sketch: draw one, upload one or pick a sample")
    elif mode == "Words only":
        sketch = None
        if words is None:
            raise DuetgenInputError("'Words only' needs words: type a few, e.g. 'red with stripes'")
    elif sketch is None and words is None:
        raise DuetgenInputError("give a sketch, words or both")
    with torch.inference_mode():
        return encoder.encode_query(
            sketch[None] if sketch is not None else None, [words] if words else None, return_states=return_states
        )


def photo_query(encoder, photo: Image.Image, words: str | None, sketch_size: int | None = None):
    """Attribute transfer from a photo (:func:`duetgen.transfer.transfer_query`): the photo's outline stands for the
    object and the new words are completed with the photo's own attributes, read zero-shot ("at night" on a solid
    green photo composes "solid green at night"). Returns the :class:`~duetgen.transfer.TransferQuery` of one pair:
    ``query`` (1, D), ``states`` (1, L, Wt), ``sketches`` (1, 3, S, S) (the generator's sketch channel, side
    ``sketch_size``), ``words`` and ``read``."""
    from duetgen.transfer import transfer_query

    with torch.inference_mode():
        return transfer_query(encoder, [square_photo(photo)], [(words or "").strip()], size=sketch_size)


def search(
    gallery: Gallery,
    query: torch.Tensor,
    k: int,
    regions: bool = False,
    verify_sketch: torch.Tensor | None = None,
    verifier=None,
    verify_words: str | None = None,
) -> list[SearchResult]:
    """The top ``k`` photos (or scenes with ``regions``); with ``verify_sketch`` (3, S, S), re-ranked by silhouette
    agreement with it (:mod:`duetgen.verify`; pass a kept ``verifier`` so photo silhouettes are read once). Scenes
    verified object by object also read the query's ``verify_words`` from each object ("" for a sketch alone)."""
    verify = {} if verify_sketch is None else {"verify_sketches": verify_sketch[None], "verifier": verifier}
    if verify_sketch is not None and regions:
        verify["verify_words"] = verify_words
    return gallery.search(query, k=min(k, len(gallery)), regions=regions, **verify)[0]


def timed(fn: Callable, *args, **kwargs):
    """(result, seconds)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def result_image(path: str, allowed: list[Path], box: tuple[int, int, int, int] | None = None) -> Image.Image | None:
    """A gallery photo for display (None when missing, unreadable or outside the allowed folders), with ``box``
    outlined."""
    if not is_inside(path, allowed):
        return None
    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > upload_limits().max_pixels:
                return None
            image = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if box is not None:
        image = outline(image, box)
    return image


def outline(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``image`` with ``box`` (x0, y0, x1, y1 pixels, exclusive) outlined; small images are upscaled first so the
    outline stays thin next to the content."""
    scale = max(1, 256 // max(image.size))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image = image.copy()
    x0, y0, x1, y1 = (v * scale for v in box)
    width = max(2, image.width // 80)
    ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], outline=OUTLINE, width=width)
    return image


def placeholder(text: str = "not shown", size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), (240, 240, 244))
    ImageDraw.Draw(image).text((8, size // 2 - 6), text, fill=(120, 120, 130))
    return image


def display(image: Image.Image, min_side: int = 192) -> Image.Image:
    """Small model outputs upscaled (nearest) so the browser does not blur them."""
    scale = -(-min_side // max(image.size))
    if scale > 1:
        return image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------


def generate(
    models: Models,
    *,
    sketch: torch.Tensor | None = None,
    words: str | None = None,
    query_embeds: torch.Tensor | None = None,
    query_token_embeds: torch.Tensor | None = None,
    steps: int = 25,
    guidance: float = 3.0,
    seed: int = 0,
    scheduler: str = "DDPM",
    n_images: int = 1,
    on_step: Callable[[int, int], None] | None = None,
    image: Image.Image | None = None,
    strength: float | None = None,
    best_of: int = 1,
) -> list[Image.Image]:
    """Images from a sketch and/or words (or a ready query), with the chosen scheduler; with ``image``, starting from
    that picture noised to ``strength`` (image-to-image) instead of pure noise; with ``best_of`` > 1, each image the
    best of that many candidates (``pipe(best_of=...)``: query cosine + silhouette agreement with the sketch).

    Raises:
        DuetgenInputError: the model has no generator, or there is nothing to generate from.
        ValueError: an argument is out of range (the pipeline's message).
    """
    if models.pipe is None:
        raise DuetgenInputError(f"the model '{models.source}' has no generator; pick a pipeline folder")
    words = (words or "").strip() or None
    if sketch is None and words is None and query_embeds is None:
        raise DuetgenInputError("give a sketch, words or both to generate from")
    if scheduler not in SCHEDULERS:
        raise DuetgenInputError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    from duetgen.pipelines import make_scheduler

    pipe = models.pipe

    start = {} if image is None else {"image": image, "strength": strength}
    if int(best_of) > 1:
        start["best_of"] = int(best_of)

    def callback(pipe_, i, _t, kwargs):
        if on_step is not None:
            on_step(i + 1, getattr(pipe_, "num_timesteps", 0) or int(steps))
        return {}

    with models.lock:  # the scheduler object is shared: one generation at a time
        pipe.scheduler = make_scheduler(SCHEDULERS[scheduler], models.default_scheduler or pipe.scheduler.config)
        out = pipe(
            sketch=sketch,
            text=None if query_embeds is not None else words,
            query_embeds=query_embeds,
            query_token_embeds=query_token_embeds if query_embeds is not None else None,
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            generator=torch.Generator().manual_seed(int(seed)),
            num_images_per_prompt=int(n_images),
            output_type="pil",
            callback_on_step_end=callback,
            **start,
        )
    return list(out.images)


# ---------------------------------------------------------------------------------------------------------------
# samples and demo scenes
# ---------------------------------------------------------------------------------------------------------------


def sample_sketches() -> dict[str, Path]:
    """Shipped sample sketches by display name."""
    out = {}
    for p in sorted((SAMPLES_DIR / "sketches").glob("*.png")):
        out[p.stem] = p
    for p in sorted((SAMPLES_DIR / "world").glob("*_sketch.png")):
        out.setdefault(p.stem.split("_", 1)[1].replace("_sketch", "") + " (world)", p)
    return out


def sample_photos() -> dict[str, Path]:
    """Shipped sample photos by display name."""
    return {p.stem.split("_", 1)[1].replace("_photo", "") + " (photo)": p
            for p in sorted((SAMPLES_DIR / "world").glob("*_photo.png"))}  # fmt: skip


def scene_cache_dir(encoder, cache_dir: Path, n_scenes: int) -> Path:
    ident = encoder.identity
    tag = hashlib.sha1(f"{ident}-{n_scenes}".encode()).hexdigest()[:10]
    return Path(cache_dir) / f"scenes-{tag}"


def build_demo_scenes(encoder, cache_dir: Path, n_scenes: int = 48, size: int = 128, seed: int = 0) -> Path:
    """Renders ``n_scenes`` procedural scenes and indexes them with regions, once per encoder; returns the gallery
    folder (reused when it already exists)."""
    from duetgen.world import render_scene, sample_scene

    folder = scene_cache_dir(encoder, cache_dir, n_scenes)
    out = folder / "gallery"
    if (out / "manifest.json").is_file():
        return out
    photos = folder / "scenes"
    photos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_scenes):
        image, _ = render_scene(sample_scene(rng), size=size, seed=seed + i)
        Image.fromarray(image).save(photos / f"scene_{i:03d}.png")
    Gallery.build(photos, encoder, out, regions=True, num_workers=0, progress=False, model_source="studio demo")
    return out


__all__ = [
    "DuetgenError",
    "DuetgenInputError",
    "Models",
    "StudioConfig",
    "allowed_path",
    "build_demo_scenes",
    "compose_query",
    "generate",
    "load_models",
    "open_gallery",
    "photo_query",
    "read_photo",
    "read_sketch_source",
    "search",
]
