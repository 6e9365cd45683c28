"""Gallery: build / save / open / search, incremental add and remove, resumable and atomic writes, encoder identity,
and the multi-process build (recipes/build_gallery.py) against a one-process build."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import duetgen
from duetgen.backbones import get_clip_config
from duetgen.errors import CheckpointError, DuetgenInputError
from duetgen.gallery import MANIFEST, Gallery, GalleryBuilder, decode_image, scan_images

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def tiny_encoder(seed: int = 0) -> duetgen.ComposedQueryEncoder:
    torch.manual_seed(seed)
    return duetgen.ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny").eval()


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder(0)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, encoder):
    d = tmp_path_factory.mktemp("enc") / "tiny"
    encoder.save_pretrained(d)
    return d


def write_photos(
    folder: Path, n: int, seed: int = 0, size: int = 40, start: int = 0, nested: bool = True
) -> list[str]:
    """n distinct random-noise photos (varied sizes), every third in a subfolder."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(start, start + n):
        sub = folder / ("sub" if nested and i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = size + int(rng.integers(0, 9)), size + int(rng.integers(0, 9))
        base = rng.integers(0, 255, (1, 1, 3)) * np.ones((h, w, 1))  # a colour plus noise: images differ
        img = np.clip(base + rng.normal(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
        p = sub / f"img{i:05d}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p.resolve()))
    return sorted(paths)


def bare_embeddings(encoder, paths) -> np.ndarray:
    with torch.no_grad():
        x = torch.stack([decode_image(p, encoder.image_size)[0] for p in paths])
        return encoder.encode_image(x).numpy()


# ---------------------------------------------------------------------------------------------------------------


def test_build_save_open_search_round_trip(tmp_path, encoder):
    photos = tmp_path / "photos"
    paths = write_photos(photos, 30)
    (photos / "broken.png").write_bytes(b"this is not an image")
    os.symlink("..", photos / "sub" / "loop")  # a symlink loop
    os.symlink("missing.png", photos / "dangling.png")
    (photos / "notes.txt").write_text("not an image extension")

    listed, skipped = scan_images(photos)
    assert len(listed) == 31 and {Path(s["path"]).name for s in skipped} == {"loop", "dangling.png"}

    gallery = Gallery.build(photos, encoder, tmp_path / "g", batch_size=7, num_workers=1, progress=False)
    assert gallery.paths == paths  # sorted path order, broken file dropped
    counts = gallery.manifest["counts"]
    assert counts == {"items": 30, "skipped": 3}
    assert any("broken.png" in s["path"] for s in gallery.manifest["skipped"])
    files = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert files == ["embeddings.npy", "index.faiss", "items.jsonl", "manifest.json"]
    assert not list(tmp_path.glob(".g.*")), "work and temp folders are cleaned up"

    manifest = json.loads((tmp_path / "g" / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and manifest["encoder"] == encoder.identity
    assert manifest["embed_dim"] == 32 and manifest["index"]["kind"] == "flat" and manifest["created"]

    # the builder's embeddings are the encoder's embeddings of the same images
    np.testing.assert_allclose(gallery.embeddings_f32(), bare_embeddings(encoder, paths), atol=1e-5)

    opened = Gallery.open(tmp_path / "g", encoder)
    assert opened.paths == paths and opened.ids == list(range(30))
    np.testing.assert_array_equal(opened.embeddings_f32(), gallery.embeddings_f32())

    queries = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    results = opened.search(queries, k=5)
    sims = queries.numpy() @ opened.embeddings_f32().T
    for q, res in enumerate(results):
        expected = np.argsort(-sims[q])[:5]
        assert [r.path for r in res] == [paths[i] for i in expected]
        np.testing.assert_allclose([r.score for r in res], sims[q, expected], atol=1e-5)
    own = opened.search(opened.embeddings_f32()[7], k=1)  # a (D,) query returns one list
    assert own[0].path == paths[7] and own[0].id == 7 and own[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DuetgenInputError, match="query embeddings must be"):
        opened.search(np.zeros((1, 31), np.float32), k=3)


def test_fp16_storage(tmp_path, encoder):
    paths = write_photos(tmp_path / "p", 12)
    g = Gallery.build(paths, encoder, tmp_path / "g", dtype="float16", num_workers=0, progress=False)
    stored = np.load(tmp_path / "g" / "embeddings.npy")
    assert stored.dtype == np.float16 and stored.shape == (12, 32)
    opened = Gallery.open(tmp_path / "g", encoder)
    assert opened.memory_per_item()["embedding"] == 64
    np.testing.assert_allclose(opened.embeddings_f32(), g.embeddings_f32(), atol=2e-3)
    assert opened.search(opened.embeddings_f32()[3], k=1)[0].path == paths[3]


def test_incremental_add_remove_equals_clean_build(tmp_path, encoder):
    paths = write_photos(tmp_path / "p", 24, nested=False)
    g = Gallery.build(paths[:16], encoder, tmp_path / "g", num_workers=0, progress=False)
    new_ids = g.add(paths[16:] + [paths[0]], encoder, num_workers=0)  # paths[0] is already in: skipped
    assert new_ids == list(range(16, 24))
    assert g.remove([3, paths[5], Path(paths[20])]) == 3
    with pytest.raises(DuetgenInputError, match="not in the gallery"):
        g.remove([3])  # already gone
    g.save()

    reopened = Gallery.open(tmp_path / "g", encoder)
    kept = [p for i, p in enumerate(paths) if i not in (3, 5, 20)]
    assert reopened.paths == kept
    assert reopened.ids == [i for i in range(24) if i not in (3, 5, 20)]  # ids are stable, never reused
    clean = Gallery.build(kept, encoder, num_workers=0, progress=False)
    np.testing.assert_allclose(reopened.embeddings_f32(), clean.embeddings_f32(), atol=1e-5)
    # search reflects the update: a removed item is never returned, an added one is found
    res = reopened.search(reopened.embeddings_f32(), k=1)
    assert [r[0].path for r in res] == kept
    assert reopened.add([tmp_path / "nope.png"], encoder, num_workers=0) == []
    assert reopened.next_id == 24


def test_open_with_another_encoder_names_both(tmp_path, encoder):
    paths = write_photos(tmp_path / "p", 5)
    Gallery.build(paths, encoder, tmp_path / "g", num_workers=0, progress=False)
    other = tiny_encoder(seed=1)
    with pytest.raises(CheckpointError) as err:
        Gallery.open(tmp_path / "g", other)
    msg = str(err.value)
    assert encoder.identity["fingerprint"] in msg and other.identity["fingerprint"] in msg
    with pytest.raises(CheckpointError):
        Gallery.open(tmp_path / "g").add(paths, other)
    with pytest.raises(DuetgenInputError, match="not a gallery"):
        Gallery.open(tmp_path / "p", encoder)


BUILD_SCRIPT = textwrap.dedent(
    """
    import sys, duetgen
    from duetgen.gallery import Gallery
    enc = duetgen.load_encoder(sys.argv[1])
    Gallery.build(sys.argv[2], enc, sys.argv[3], batch_size=4, num_workers=0, flush_every=3, progress=False)
    """
)


def test_killed_build_keeps_old_gallery_and_resumes(tmp_path, encoder, encoder_dir):
    out = tmp_path / "g"
    old_paths = write_photos(tmp_path / "old", 6)
    Gallery.build(old_paths, encoder, out, num_workers=0, progress=False)
    photos = tmp_path / "big"
    write_photos(photos, 2500, size=32, nested=False)

    proc = subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(encoder_dir), str(photos), str(out)], env=ENV)
    work = tmp_path / ".g.work"
    builder = GalleryBuilder(encoder, photos, out, num_workers=0, progress=False)
    builder.paths = sorted(str(p) for p in photos.glob("*.png"))
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            if work.is_dir() and (work / "plan.json").is_file() and builder.done_rows().sum() >= 400:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the build finished before it could be killed; make it bigger"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done_at_kill = int(builder.done_rows().sum())
    assert 400 <= done_at_kill < 2500

    old = Gallery.open(out, encoder)  # the previous gallery is intact and readable
    assert old.paths == old_paths
    assert old.search(old.embeddings_f32()[2], k=1)[0].path == old_paths[2]

    builder = GalleryBuilder(encoder, photos, out, batch_size=64, num_workers=0, progress=False)
    builder.prepare()
    builder.embed()
    assert builder.resumed >= done_at_kill  # continued, did not start again
    resumed = builder.finalize()
    assert not work.exists()
    clean = Gallery.build(photos, encoder, batch_size=64, num_workers=0, progress=False)
    reopened = Gallery.open(out, encoder)
    assert reopened.paths == clean.paths and len(reopened) == 2500
    np.testing.assert_allclose(reopened.embeddings_f32(), clean.embeddings_f32(), atol=1e-5)
    np.testing.assert_allclose(resumed.embeddings_f32(), clean.embeddings_f32(), atol=1e-5)


SAVE_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from duetgen.gallery import atomic_write_folder
    def write(tmp):
        (tmp / "manifest.json").write_text("{}")
        (tmp / "embeddings.npy").write_bytes(b"half written")
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of writing the new version
    atomic_write_folder(sys.argv[1], write)
    """
)


def test_killed_save_leaves_previous_gallery(tmp_path, encoder):
    paths = write_photos(tmp_path / "p", 8)
    g = Gallery.build(paths, encoder, tmp_path / "g", num_workers=0, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir()}
    proc = subprocess.run([sys.executable, "-c", SAVE_KILL_SCRIPT, str(tmp_path / "g")], env=ENV)
    assert proc.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(".g.tmp-*")), "the killed writer left its temp folder"
    assert {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir()} == before
    assert Gallery.open(tmp_path / "g", encoder).paths == paths
    g.remove([0])
    g.save()  # the next save clears the stale temp folder
    assert not list(tmp_path.glob(".g.tmp-*"))
    assert Gallery.open(tmp_path / "g", encoder).paths == paths[1:]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    with pytest.raises(DuetgenInputError, match="not a gallery"):
        g.save(tmp_path / "other")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_build_equals_one_process(tmp_path, encoder, encoder_dir):
    paths = write_photos(tmp_path / "p", 45)
    (tmp_path / "p" / "bad.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        str(REPO / "recipes" / "build_gallery.py"), str(tmp_path / "p"), "--out", str(tmp_path / "g2"),
        "--model", str(encoder_dir), "--batch-size", "4", "--num-workers", "0",
    ]  # fmt: skip
    t0 = time.time()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.time() - t0 < 60
    assert "rank 0: rows 0:23" in proc.stdout and "rank 1: rows 23:46" in proc.stdout
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["processes"] == 2 and "MULTI_CPU" in summary["distributed_type"]
    assert summary["items"] == 45 and summary["skipped"] == 1

    two = Gallery.open(tmp_path / "g2", encoder)
    one = Gallery.build(tmp_path / "p", encoder, tmp_path / "g1", batch_size=16, num_workers=0, progress=False)
    assert two.paths == one.paths == paths
    np.testing.assert_allclose(two.embeddings_f32(), one.embeddings_f32(), atol=1e-5)


def test_gallery_moves_with_its_photos(tmp_path, encoder):
    """Paths are stored relative to the gallery folder: a gallery shipped or moved with its photos still opens."""
    write_photos(tmp_path / "a" / "photos", 6, nested=False)
    Gallery.build(tmp_path / "a" / "photos", encoder, out=tmp_path / "a" / "gallery", progress=False)
    stored = (tmp_path / "a" / "gallery" / "items.jsonl").read_text()
    assert str(tmp_path) not in stored
    os.rename(tmp_path / "a", tmp_path / "b")
    g = Gallery.open(tmp_path / "b" / "gallery", encoder)
    assert all(Path(p).is_file() and str(tmp_path / "b") in p for p in g.paths)
    hit = g.search(encoder.encode_image(torch.rand(1, 3, 32, 32)).detach().numpy(), 1)[0][0]
    assert Path(hit.path).is_file()


# ---------------------------------------------------------------------------------------------------------------
# damaged gallery files (found by tests/test_fuzz.py): refused with one-line CheckpointErrors, never other exceptions


@pytest.fixture(scope="module")
def region_gallery(tmp_path_factory, encoder) -> Path:
    root = tmp_path_factory.mktemp("damaged")
    paths = write_photos(root / "photos", 3, nested=False)
    Gallery.build(paths, encoder, root / "good", num_workers=0, progress=False, regions=True)
    return root / "good"


def _manifest(good: Path, **changes) -> bytes:
    m = json.loads((good / MANIFEST).read_text())
    m.update(changes)
    return json.dumps(m).encode()


def _regions(good: Path, **changes) -> bytes:
    m = json.loads((good / MANIFEST).read_text())
    m["regions"].update(changes)
    return json.dumps(m).encode()


def _items_line0(good: Path, **changes) -> bytes:
    lines = (good / "items.jsonl").read_text().splitlines()
    d = json.loads(lines[0])
    d.update({k: v for k, v in changes.items() if v is not ...})
    for k in [k for k, v in changes.items() if v is ...]:
        del d[k]
    lines[0] = json.dumps(d)
    return ("\n".join(lines) + "\n").encode()


DAMAGED = {
    "manifest nested deep": ("manifest.json", lambda g: b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    "manifest a number": ("manifest.json", lambda g: b"1", "not a JSON object"),
    "no encoder": ("manifest.json", lambda g: b'{"kind": "duetgen-gallery", "format_version": 1}', "'encoder'"),
    "counts a number": ("manifest.json", lambda g: _manifest(g, counts=5), "counts.items"),
    "index null": ("manifest.json", lambda g: _manifest(g, index=None), "index.kind"),
    "root a number": ("manifest.json", lambda g: _manifest(g, root=7), "'root'"),
    "embed_dim a string": ("manifest.json", lambda g: _manifest(g, embed_dim="32"), "embed_dim"),
    "nprobe NaN": (
        "manifest.json",
        lambda g: _manifest(g, index={"kind": "flat", "params": {"nprobe": float("nan")}}),
        "nprobe",
    ),  # fmt: skip
    "ragged boxes": ("manifest.json", lambda g: _regions(g, boxes=[[0, 0, 1]]), "regions.boxes"),
    "NaN box": ("manifest.json", lambda g: _regions(g, boxes=[[0, 0, float("nan"), 1]] * 35), "regions.boxes"),
    "boxes miscounted": ("manifest.json", lambda g: _regions(g, boxes=[[0, 0, 1, 1]], per_item=1), "regions.npy"),
    "region scales null": ("manifest.json", lambda g: _regions(g, config={"scales": None}), "scales"),
    "items not JSON": ("items.jsonl", lambda g: b"not json\n", "line 1 is not valid JSON"),
    "items not UTF-8": ("items.jsonl", lambda g: b"\xff\xfe\n", "not UTF-8"),
    "item without path": ("items.jsonl", lambda g: _items_line0(g, path=...), "line 1 has no 'path'"),
    "item path a list": ("items.jsonl", lambda g: _items_line0(g, path=[1]), "line 1 has no 'path'"),
    "item id inf": ("items.jsonl", lambda g: _items_line0(g, id=float("inf")), "'id'"),
    "item w a string": ("items.jsonl", lambda g: _items_line0(g, w="40"), "'w'"),
    "item deep JSON": ("items.jsonl", lambda g: b"[" * 100_000 + b"\n", "line 1 is not valid JSON"),
    "too few items": ("items.jsonl", lambda g: _items_line0(g).split(b"\n", 1)[1], "has 2 rows"),
    "npy header cut": ("embeddings.npy", lambda g: b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',\n", "damaged"),
    "npy header 2 GB": ("embeddings.npy", lambda g: b"\x93NUMPY\x02\x00\xff\xff\xff\x7f" + b" " * 100, "header"),
    "npy of strings": ("embeddings.npy", lambda g: _npy_bytes(np.array([["a"] * 32] * 3)), "not floats"),
    "npy shape too big": ("embeddings.npy", lambda g: _npy_bytes(np.zeros((3, 32), np.float32))[:-8], "bytes"),
    "regions header cut": ("regions.npy", lambda g: b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f2',\n", "damaged"),
    "regions wrong shape": ("regions.npy", lambda g: _npy_bytes(np.zeros((3, 2, 32), np.float16)), "shape"),
    "index garbage": ("index.faiss", lambda g: b"IxF2garbage", "SHA-256"),
    "index empty": ("index.faiss", lambda g: b"", "SHA-256"),
}


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_gallery_files_are_refused_with_one_line(tmp_path, encoder, region_gallery, case):
    import shutil

    file, make, needle = DAMAGED[case]
    d = tmp_path / "g"
    shutil.copytree(region_gallery, d)
    (d / file).write_bytes(make(region_gallery))
    with pytest.raises(CheckpointError) as err:
        g = Gallery.open(d, encoder)
        q = torch.nn.functional.normalize(torch.randn(2, encoder.embed_dim), dim=-1)
        g.search(q, k=2)
        g.search(q, k=2, regions=True)
    message = str(err.value)
    assert "\n" not in message and needle in message, message
    assert "duetgen index" in message or "built with encoder" in message, message


def test_index_checksum_detects_mutation_and_legacy_galleries_open(tmp_path, encoder, region_gallery):
    import shutil

    manifest = json.loads((region_gallery / MANIFEST).read_text())
    assert len(manifest["index"]["sha256"]) == 64
    q = torch.nn.functional.normalize(torch.randn(1, encoder.embed_dim), dim=-1)
    expected = Gallery.open(region_gallery, encoder).search(q, k=3)

    flipped = tmp_path / "flipped"  # a flipped bit in the stored vectors: faiss alone would accept it silently
    shutil.copytree(region_gallery, flipped)
    data = bytearray((flipped / "index.faiss").read_bytes())
    data[-5] ^= 0x10
    (flipped / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="index.faiss in gallery .* SHA-256 does not match"):
        Gallery.open(flipped, encoder)

    legacy = tmp_path / "legacy"  # saved before the checksum: opens, and a garbage index is still refused cleanly
    shutil.copytree(region_gallery, legacy)
    del manifest["index"]["sha256"]
    (legacy / MANIFEST).write_text(json.dumps(manifest))
    got = Gallery.open(legacy, encoder).search(q, k=3)
    assert [(r.id, r.score) for r in got[0]] == [(r.id, r.score) for r in expected[0]]
    (legacy / "index.faiss").write_bytes(b"IxF2garbage")
    with pytest.raises(CheckpointError, match=r"index.faiss in gallery .* is damaged \(.*\); rebuild the gallery"):
        Gallery.open(legacy, encoder)
    (legacy / "index.faiss").write_bytes(b"IxFI" + b"\xff" * 64)  # a header declaring an enormous index
    with pytest.raises(CheckpointError, match="index.faiss"):
        Gallery.open(legacy, encoder)


def test_damaged_world_cache_is_refused_then_rebuilt(tmp_path):
    from duetgen.world_dataset import WorldGroups, build_world_groups, load_or_build

    cache = tmp_path / "w.npz"
    build_world_groups(2, 0, 16, progress=False).save(cache)
    good = cache.with_suffix(".json").read_bytes()
    record = json.loads(good)[0]
    bad_inst = {**record, "instances": [{**record["instances"][0], "cx": float("nan")}, record["instances"][1]]}
    bad_attrs = {**record, "attrs": [{"colour": "red"}, record["attrs"][1]]}
    damaged = [b"not json", b"\xff\xfe", b"[" * 100_000, b'[{"instances": [], "attrs": []}]', b"{}"]
    damaged += [json.dumps(recs).encode() for recs in ([record], [bad_inst, record], [bad_attrs, record])]
    for data in damaged:
        cache.with_suffix(".json").write_bytes(data)
        with pytest.raises(DuetgenInputError, match=r"world cache .* is damaged .*; delete it and it will be rebuilt"):
            WorldGroups.load(cache)
    groups = load_or_build(cache, 2, seed=0, size=16)  # rebuilt, with a warning
    assert len(groups) == 2 and cache.with_suffix(".json").read_bytes() == good
    assert WorldGroups.load(cache).caption(1, 1, 1)


def test_pipeline_folder_check_refuses_deep_json_and_path_names(tmp_path):
    from duetgen.pipelines.pipeline_duetgen import check_pipeline_folder

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "model_index.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        check_pipeline_folder(tmp_path / "p")
    (tmp_path / "outside").mkdir()
    (tmp_path / "p" / "model_index.json").write_text(json.dumps({"../outside": ["duetgen", "ComposedQueryEncoder"]}))
    with pytest.raises(CheckpointError, match="is not a plain name"):
        check_pipeline_folder(tmp_path / "p")


def test_index_cli_names_a_symlink_loop(tmp_path, capsys):
    from duetgen.cli import main

    loop = tmp_path / "photos"
    os.symlink(loop, loop)
    assert main(["index", str(loop), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a symlink loop (or a broken link); point it at a folder" in err, err


def test_build_gives_the_model_the_cores_the_decoders_leave_free(tmp_path, encoder, monkeypatch):
    """On 2 cores a small model (decoding costs as much as encoding) runs on 1 thread beside 1 decoding process, and
    the caller's thread setting is restored after the build; a heavy model (decoding negligible) keeps every thread."""
    from duetgen import gallery as G

    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # 600 px noise photos: decoding one costs far more than the tiny encoder's forward
        Image.fromarray(rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"p{i}.png")
    paths = sorted(str(p) for p in (tmp_path / "photos").iterdir())
    monkeypatch.setattr(G.os, "cpu_count", lambda: 2)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert G._model_threads(encoder, paths[:1], num_workers=1, windows=None) == 1
        assert G._model_threads(encoder, paths[:1], num_workers=0, windows=None) is None  # nothing decodes aside
        seen = []
        real_encode = encoder.encode_image
        monkeypatch.setattr(
            encoder, "encode_image", lambda x: (seen.append(torch.get_num_threads()), real_encode(x))[1]
        )
        Gallery.build(tmp_path / "photos", encoder, tmp_path / "g", batch_size=2, num_workers=1, progress=False)
        assert seen and seen[-1] == 1  # the last batch was encoded on the one free core
        assert torch.get_num_threads() == 2  # and the caller's setting is back

        class Heavy(torch.nn.Module):  # an encoder whose forward costs far more than decoding a photo
            device, dtype, image_size = torch.device("cpu"), torch.float32, encoder.image_size

            def encode_image(self, x):
                time.sleep(0.01 * len(x))
                return x.flatten(1)

        small = write_photos(tmp_path / "small", 1)  # a 40 px photo decodes in well under a millisecond
        assert G._model_threads(Heavy(), small, num_workers=1, windows=None) is None
    finally:
        torch.set_num_threads(previous)
