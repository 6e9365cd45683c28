"""Pre-rendered training and benchmark sets of the procedural world, built in 2x2 "twin groups".

A group holds two instances (geometry I0, I1) and two attribute sets (A0, A1) and the four photos
``I_i`` rendered with ``A_j``, plus one sketch per instance. Every photo therefore has, inside its own group, a
*geometry twin* (same instance, other attributes: only words tell them apart) and an *attribute twin* (same
attributes, other instance: only the sketch tells them apart). Batches of whole groups give the duet losses the hard
negatives that in-batch random sampling almost never supplies.

Rendering is done once and cached as uint8 arrays in an ``.npz`` (no pickle) plus a JSON side file with the
instance and attribute records, so training steps cost no rendering time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import world
from .errors import DuetgenInputError

logger = logging.getLogger(__name__)


@dataclass
class WorldGroups:
    """Rendered twin groups.

    Attributes:
        photos: (G, 2, 2, H, W, 3) uint8, indexed [group, instance, attribute set].
        sketches: (G, 2, H, W) uint8, indexed [group, instance].
        shapes: (G, 2) int64 shape-category index of each instance.
        records: per group, ``{"instances": [inst0, inst1], "attrs": [attrs0, attrs1]}`` as plain dicts.
        pool: the shape categories the set was drawn from (all of :data:`duetgen.world.SHAPES` unless a zero-shot
            split held some out); :func:`load_or_build` reuses a cache only for the same pool.
        pattern_frame: the photos' pattern frame (:func:`duetgen.world.render_photo`): "object" (the world's
            photos) or "canvas" (the generator's training targets); a cache serves only runs of the same frame.
    """

    photos: np.ndarray
    sketches: np.ndarray
    shapes: np.ndarray
    records: list[dict]
    pool: tuple[str, ...] = world.SHAPES
    pattern_frame: str = "object"

    def __len__(self) -> int:
        return self.photos.shape[0]

    @property
    def size(self) -> int:
        return self.photos.shape[-2]

    def words(self, group: int, attr: int) -> str:
        """What a user would type about attribute set ``attr`` of ``group``."""
        return world.words(world.Attributes.from_dict(self.records[group]["attrs"][attr]))

    def caption(self, group: int, inst: int, attr: int, rng: np.random.Generator | None = None, drop_prob=0.0):
        """The full caption of photo [group, inst, attr]."""
        rec = self.records[group]
        return world.caption(
            _instance(rec["instances"][inst]),
            world.Attributes.from_dict(rec["attrs"][attr]),
            rng=rng,
            drop_prob=drop_prob,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Writes ``path`` (.npz) and ``path.json`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        pool = np.asarray([world.SHAPES.index(x) for x in self.pool], dtype=np.int64)
        frame = np.int64(world.PATTERN_FRAMES.index(self.pattern_frame))
        np.savez(tmp, photos=self.photos, sketches=self.sketches, shapes=self.shapes, pool=pool, pattern_frame=frame)
        meta_tmp = path.with_suffix(".json.tmp")
        meta_tmp.write_text(json.dumps(self.records))
        os.replace(meta_tmp, path.with_suffix(".json"))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> WorldGroups:
        """Reads a cache written by :meth:`save`.

        Raises:
            DuetgenInputError: the cache (``path`` or its ``.json`` side file) is missing, damaged or inconsistent;
                the message names the file and says to delete it (:func:`load_or_build` then renders it again).
        """
        path = Path(path)
        side = path.with_suffix(".json")

        def damaged(file: Path, what: str) -> DuetgenInputError:
            return DuetgenInputError(f"world cache '{file}' is damaged ({what}); delete it and it will be rebuilt")

        try:
            with np.load(path, allow_pickle=False) as data:
                photos, sketches, shapes = data["photos"], data["sketches"], data["shapes"]
                pool_idx = data["pool"] if "pool" in data.files else np.arange(len(world.SHAPES))  # older caches
                frame_idx = data["pattern_frame"] if "pattern_frame" in data.files else np.int64(0)  # older caches
        except FileNotFoundError:
            raise DuetgenInputError(f"world cache '{path}' does not exist; build it with load_or_build") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise damaged(path, _one_line(err)) from None
        g = photos.shape[0] if photos.ndim == 6 else -1
        if (
            photos.dtype != np.uint8
            or sketches.dtype != np.uint8
            or photos.ndim != 6
            or photos.shape[1:3] != (2, 2)
            or photos.shape[-1] != 3
            or sketches.shape != (g, 2, *photos.shape[3:5])
            or shapes.shape != (g, 2)
            or shapes.dtype.kind not in "iu"
            or pool_idx.ndim != 1
            or pool_idx.dtype.kind not in "iu"
            or not 0 < len(pool_idx) <= len(world.SHAPES)
            or len(set(pool_idx.tolist())) != len(pool_idx)
            or not all(0 <= v < len(world.SHAPES) for v in pool_idx.tolist())
            or frame_idx.shape != ()
            or frame_idx.dtype.kind not in "iu"
            or not 0 <= int(frame_idx) < len(world.PATTERN_FRAMES)
        ):
            raise damaged(path, "its arrays do not have the shapes of a set of twin groups")
        pool = tuple(world.SHAPES[int(v)] for v in pool_idx)
        try:
            size = side.stat().st_size
        except FileNotFoundError:
            raise damaged(side, "the side file is missing") from None
        if size > MAX_RECORD_BYTES * (g + 1):
            raise damaged(side, f"{size} bytes for {g} groups")
        try:
            records = json.loads(side.read_bytes())
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            raise damaged(side, f"not valid JSON: {_one_line(err)}") from None
        if not isinstance(records, list) or len(records) != g:
            raise damaged(side, f"it must be a list of {g} group records")
        for i, rec in enumerate(records):
            problem = _record_problem(rec)
            if not problem and any(inst["shape"] not in pool for inst in rec["instances"]):
                problem = "an instance's shape is outside the cache's shape pool"
            if problem:
                raise damaged(side, f"group {i}: {problem}")
        frame = world.PATTERN_FRAMES[int(frame_idx)]
        return cls(photos=photos, sketches=sketches, shapes=shapes, records=records, pool=pool, pattern_frame=frame)


MAX_RECORD_BYTES = 16 * 1024  # a group record is a few hundred bytes of JSON


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number_in(v, lo: float, hi: float) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def _record_problem(rec) -> str | None:
    """What is wrong with one group record of the side file (None: nothing): the keys, types and ranges that
    :meth:`WorldGroups.words` and :meth:`WorldGroups.caption` rely on."""
    if not isinstance(rec, dict):
        return "not an object"
    insts, attrs = rec.get("instances"), rec.get("attrs")
    if not (isinstance(insts, list) and len(insts) == 2 and isinstance(attrs, list) and len(attrs) == 2):
        return "'instances' and 'attrs' must be lists of two"
    for inst in insts:
        if not isinstance(inst, dict) or not isinstance(inst.get("shape"), str) or inst["shape"] not in world.SHAPES:
            return "an instance has no valid 'shape'"
        for key, lo, hi in (("cx", 0.0, 1.0), ("cy", 0.0, 1.0), ("scale", 0.0, 1.0), ("rotation", -1e6, 1e6)):
            if not _number_in(inst.get(key), lo, hi):
                return f"an instance's {key!r} is not a number in [{lo:g}, {hi:g}]"
        params = inst.get("params")
        if not (isinstance(params, list) and len(params) == 2 and all(_number_in(v, 0.0, 1.0) for v in params)):
            return "an instance's 'params' is not two numbers in [0, 1]"
    for att in attrs:
        if not isinstance(att, dict):
            return "an attribute set is not an object"
        for key, valid in (("colour", world.COLOURS), ("pattern", world.PATTERNS), ("domain", world.DOMAINS)):
            if not isinstance(att.get(key), str) or att[key] not in valid:
                return f"an attribute set's {key!r} is not one of {', '.join(valid)}"
    return None


def _instance(d: dict) -> world.Instance:
    return world.Instance.from_dict(d)


def _as_dict(obj) -> dict:
    return obj.to_dict()


def sketch_caption(instance: world.Instance, rng: np.random.Generator | None = None, drop_prob: float = 0.0) -> str:
    """Caption of a sketch (stage 1 shows CLIP line drawings too, as real CLIP saw them): geometry words only."""
    parts = [world.size_word(instance), world.SHAPE_NOUNS[instance.shape]]
    keep = [True, True, True, True] if not drop_prob else [rng.random() >= drop_prob for _ in range(4)]
    noun = " ".join(parts if keep[0] else parts[1:])
    text = f"{'a sketch' if keep[3] else 'a drawing'} of {world._article(noun)} {noun}"
    if keep[1]:
        text += f" {world.position_word(instance)}"
    if keep[2]:
        text += f", {world.orientation_word(instance)}"
    return text


def user_caption(
    instance: world.Instance, attrs: world.Attributes, rng: np.random.Generator | None = None, drop_prob: float = 0.0
) -> str:
    """A caption in the order a composed query takes: pose first, then what a user types about the attributes.

    E.g. 'a large star at the top left, tilted right, red with stripes in pixel art'. Stage 1 mixes it with
    :func:`duetgen.world.caption` so the text encoder has seen attribute words follow a description of an object.
    """
    keep = [True] * 4 if not drop_prob else [rng.random() >= drop_prob for _ in range(4)]
    noun = world.SHAPE_NOUNS[instance.shape]
    noun = f"{world.size_word(instance)} {noun}" if keep[0] else noun
    text = f"{world._article(noun)} {noun}"
    if keep[1]:
        text += f" {world.position_word(instance)}"
    if keep[2]:
        text += f", {world.orientation_word(instance)}"
    if keep[3]:
        text += f", {world.words(attrs)}"
    return text


def build_world_groups(
    n_groups: int,
    seed: int,
    size: int = 64,
    shapes: tuple[str, ...] | None = None,
    progress: bool = True,
    pattern_frame: str = "object",
) -> WorldGroups:
    """Renders ``n_groups`` twin groups, deterministic from ``seed``.

    Args:
        n_groups: number of 2x2 groups (4 photos, 2 sketches each).
        seed: world seed; group g uses ``np.random.default_rng([seed, g])``.
        size: image side in pixels.
        shapes: restrict instances to these shape categories (zero-shot splits).
        progress: show a tqdm bar.
        pattern_frame: the photos' pattern frame (:func:`duetgen.world.render_photo`); the same seed gives the
            same instances, attributes, sketches and render noise in either frame.
    """
    if pattern_frame not in world.PATTERN_FRAMES:
        raise DuetgenInputError(f"pattern_frame must be one of {world.PATTERN_FRAMES}, got {pattern_frame!r}")
    photos = np.zeros((n_groups, 2, 2, size, size, 3), dtype=np.uint8)
    sketches = np.zeros((n_groups, 2, size, size), dtype=np.uint8)
    shape_idx = np.zeros((n_groups, 2), dtype=np.int64)
    records: list[dict] = []
    pool = tuple(shapes) if shapes else tuple(world.SHAPES)
    it = range(n_groups)
    if progress:
        try:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="rendering world groups", unit="group", mininterval=2.0)
        except ImportError:  # pragma: no cover
            pass
    for g in it:
        rng = np.random.default_rng([seed, g])
        insts = [world.sample_instance(rng, shape=str(rng.choice(pool))) for _ in range(2)]
        a0 = world.sample_attributes(rng)
        a1 = world.sample_attributes(rng)
        while a1 == a0:
            a1 = world.sample_attributes(rng)
        attrs = [a0, a1]
        for i, inst in enumerate(insts):
            shape_idx[g, i] = world.SHAPES.index(inst.shape)
            sketches[g, i] = world.render_sketch(inst, size=size, seed=int(rng.integers(2**31)))
            for j, att in enumerate(attrs):
                photos[g, i, j] = world.render_photo(
                    inst, att, size=size, seed=int(rng.integers(2**31)), pattern_frame=pattern_frame
                )
        records.append({"instances": [_as_dict(x) for x in insts], "attrs": [_as_dict(a) for a in attrs]})
    return WorldGroups(photos, sketches, shape_idx, records, pool, pattern_frame)


def load_or_build(
    path: str | os.PathLike, n_groups: int, seed: int, size: int = 64, shapes=None, pattern_frame: str = "object"
) -> WorldGroups:
    """Loads a cached set if it matches (n_groups, size, shape pool, pattern frame), else renders and caches it.

    The shape pool matters for zero-shot runs: a cache of all shapes must never serve a run that holds some out.
    """
    path = Path(path)
    pool = tuple(shapes) if shapes else tuple(world.SHAPES)
    for s in pool:
        world._check_shape(s)
    if path.is_file():
        try:
            groups = WorldGroups.load(path)
        except DuetgenInputError as err:
            logger.warning("%s; rebuilding it", err)
        else:
            if (
                len(groups) == n_groups
                and groups.size == size
                and set(groups.pool) == set(pool)
                and groups.pattern_frame == pattern_frame
            ):
                return groups
            logger.info("cache %s does not match (n=%d, size=%d, %d shapes, %s frame); rebuilding", path, n_groups,
                        size, len(pool), pattern_frame)  # fmt: skip
    groups = build_world_groups(n_groups, seed, size, shapes, pattern_frame=pattern_frame)
    groups.save(path)
    return groups


def split_shapes(holdout: str | tuple[str, ...] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(training shapes, held-out shapes)`` for a zero-shot split given as "bell,drop,kite" (or a tuple).

    Raises:
        DuetgenInputError: an unknown shape name, or every shape held out.
    """
    names = tuple(s.strip() for s in holdout.split(",") if s.strip()) if isinstance(holdout, str) else holdout or ()
    for s in names:
        world._check_shape(s)
    train = tuple(s for s in world.SHAPES if s not in names)
    if not train:
        raise DuetgenInputError("every world shape is held out; leave at least one to train on")
    return train, tuple(names)


def holdout_shapes_arg(value: str) -> tuple[str, ...]:
    """``argparse`` type of a ``--holdout-shapes`` option ("bell,drop,kite"): the held-out shape names, checked; a bad
    name becomes argparse's one-line usage error."""
    import argparse

    try:
        return split_shapes(value)[1]
    except DuetgenInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cache_path(path: str | os.PathLike, holdout: tuple[str, ...] = ()) -> Path:
    """The cache file of a training set: ``path`` itself, or ``<stem>_without_<shapes>.npz`` for a zero-shot split, so
    the full set and each split keep their own cache."""
    path = Path(path)
    if not holdout:
        return path
    return path.with_name(f"{path.stem}_without_{'-'.join(sorted(holdout)).replace(' ', '')}{path.suffix}")


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) or (..., H, W) -> float (..., 3, H, W) in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.ndim >= 3 and t.shape[-1] == 3:
        t = t.movedim(-1, -3)
    else:
        t = t.unsqueeze(-3).expand(*t.shape[:-2], 3, *t.shape[-2:])
    return t.float().div_(255.0)
