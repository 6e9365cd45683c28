"""Crash safety under ``kill -9``: galleries, training state, batch generation.

Every kill here is a real SIGKILL of a real process (no cleanup handlers run). Each test checks what a user relies
on after such a crash:

* a gallery being built or rebuilt (``duetgen index``) is never half-written under its name: the folder holds the
  previous gallery (or none) until the new one is complete, readers opening it while a writer replaces it over and
  over always get one complete version, and a rerun completes (resuming the embeddings already done);
* training (``recipes/train_world_clip.py``, tiny settings) killed after saving state, or in the middle of a save,
  keeps its last good state, and ``--resume`` ends bit-identical to an uninterrupted run of the same length;
* batch generation (``recipes/sketch_text_generation.py``) killed mid-run keeps every finished image as a valid PNG,
  and a rerun skips them and completes the rest.

Slow parts are slowed on purpose (a sleep per batch, through a wrapper that patches the library) only to give the
kill a wide window; the code under test is the shipped code.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from PIL import Image
from safetensors.torch import load_file

import duetgen
from duetgen.backbones import get_clip_config
from duetgen.gallery import Gallery, GalleryBuilder

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0, what: str = "") -> None:
    """Polls ``condition()`` every 5 ms while ``proc`` runs; fails if the process ends first or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace")[-3000:] if proc.stdout else ""
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}:\n{out}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def valid_png(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any failure means the file is not a whole PNG
        return False


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    enc = duetgen.ComposedQueryEncoder(get_clip_config("duetgen-tiny"), backbone="duetgen-tiny").eval()
    d = tmp_path_factory.mktemp("enc") / "tiny"
    enc.save_pretrained(d)
    return d


# ---------------------------------------------------------------------------------------------------------------
# a. galleries
# ---------------------------------------------------------------------------------------------------------------

# `duetgen index` with a sleep after every embedded batch (a wide window for the kill) and, with KILL_BEFORE_SWAP,
# a SIGKILL of itself once the new gallery is completely written to its temporary folder, just before the swap.
INDEX_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    import duetgen.atomic, duetgen.gallery
    from duetgen.cli import main

    inner = duetgen.gallery._iter_embedded
    def slow(*args, **kwargs):
        for batch in inner(*args, **kwargs):
            yield batch
            time.sleep(float(os.environ.get("SLEEP_PER_BATCH", "0")))
    duetgen.gallery._iter_embedded = slow
    if os.environ.get("KILL_BEFORE_SWAP"):
        def killed_swap(tmp, dest):
            os.kill(os.getpid(), signal.SIGKILL)
        duetgen.atomic.swap_in = killed_swap  # what write_folder_atomic calls
    sys.exit(main(sys.argv[1:]))
    """
)


def write_photos(folder: Path, n: int, seed: int, size: int = 32) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = np.clip(rng.integers(0, 255, (1, 1, 3)) + rng.normal(0, 50, (size, size, 3)), 0, 255).astype(np.uint8)
        paths.append(str(folder / f"img{i:04d}.png"))
        Image.fromarray(img).save(paths[-1])
    return sorted(paths)


def test_killed_index_never_leaves_a_half_written_gallery_and_a_rerun_completes(tmp_path, tiny_encoder_dir, caplog):
    encoder = duetgen.load_encoder(tiny_encoder_dir)
    out = tmp_path / "photos.gallery"
    old_paths = write_photos(tmp_path / "old", 5, seed=1)
    Gallery.build(old_paths, encoder, out, num_workers=0, progress=False)
    old_bytes = {p.name: p.read_bytes() for p in out.iterdir()}
    photos = tmp_path / "new"
    new_paths = write_photos(photos, 240, seed=2)
    args = ["index", str(photos), "--out", str(out), "--model", str(tiny_encoder_dir), "--batch-size", "8",
            "--num-workers", "0", "--rebuild", "--quiet"]  # fmt: skip
    probe = GalleryBuilder(encoder, photos, out, progress=False)
    probe.paths = new_paths

    def check_destination() -> None:  # at every moment: the old gallery, complete
        g = Gallery.open(out, encoder)
        assert g.paths == old_paths and len(g.embeddings) == 5 and g.index.ntotal == 5

    # 1. killed in the middle of embedding
    proc = subprocess.Popen([sys.executable, "-c", INDEX_SCRIPT, *args], env={**ENV, "SLEEP_PER_BATCH": "0.04"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip

    def some_rows_done() -> bool:
        check_destination()
        return probe.work_dir.is_dir() and (probe.work_dir / "plan.json").is_file() and probe.done_rows().sum() >= 40

    wait_for(some_rows_done, proc, what="40 photos were embedded")
    sigkill(proc)
    done_at_kill = int(probe.done_rows().sum())
    assert 40 <= done_at_kill < 240
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old_bytes  # untouched, byte for byte
    check_destination()

    # 2. a first build into a new folder, killed with everything embedded and the gallery completely written to its
    #    temporary folder, just before the rename that makes it the gallery: no gallery at all under its name
    fresh = tmp_path / "fresh.gallery"
    fresh_args = [*args[:3], str(fresh), *args[4:]]
    r = subprocess.run([sys.executable, "-c", INDEX_SCRIPT, *fresh_args], env={**ENV, "KILL_BEFORE_SWAP": "1"},
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not fresh.exists()
    assert list(tmp_path.glob(f".{fresh.name}.tmp-*")), "the killed save left its (complete) temporary folder"
    with pytest.raises(duetgen.DuetgenInputError, match="not a gallery"):
        Gallery.open(fresh, encoder)
    check_destination()

    # 3. reruns complete, continuing the embeddings already done, and clear what the kills left behind
    from duetgen.cli import main

    with caplog.at_level(logging.INFO, logger="duetgen.gallery"):
        assert main(args) == 0
        assert main(fresh_args) == 0
    resumed = [int(m.split()[1]) for m in caplog.messages if m.startswith("resuming:")]
    assert len(resumed) == 2 and resumed[0] >= done_at_kill and resumed[1] == 240, caplog.messages
    for dest in (out, fresh):
        g = Gallery.open(dest, encoder)
        assert g.paths == new_paths and g.index.ntotal == 240
        assert not list(tmp_path.glob(f".{dest.name}.*")), "a temporary or work folder was left behind"
    clean = Gallery.build(new_paths, encoder, batch_size=8, num_workers=0, progress=False)
    for dest in (out, fresh):
        np.testing.assert_allclose(Gallery.open(dest).embeddings_f32(), clean.embeddings_f32(), atol=1e-6)


# A writer that replaces one gallery folder over and over: version v has 3 + v % 5 items whose paths, sizes and
# embeddings all carry v, so a reader can tell whether everything it read came from one version.
WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from duetgen.gallery import Gallery

    dest, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ident = {"backbone": "synthetic", "embed_dim": 8, "fingerprint": "0"}
    for v in range(first, first + count):
        n = 3 + v % 5
        emb = np.zeros((n, 8), np.float32)
        emb[:, v % 8] = 1.0
        items = [{"id": i, "path": f"/v{v}/img{i}.png", "w": v, "h": n} for i in range(n)]
        Gallery(emb, items, ident, index_kind="flat", manifest={"model_source": f"v{v}"}).save(dest)
        print(v, flush=True)
    """
)


def check_version(g: Gallery) -> int:
    """The version a whole gallery was read from; fails if its parts come from different versions."""
    v = int(g.manifest["model_source"][1:])
    n = 3 + v % 5
    assert len(g) == n and g.embeddings.shape == (n, 8) and g.index.ntotal == n
    assert all(it["path"] == f"/v{v}/img{i}.png" and it["w"] == v for i, it in enumerate(g.items))
    assert (np.argmax(g.embeddings_f32(), 1) == v % 8).all()
    assert g.search(np.eye(8, dtype=np.float32)[v % 8], k=1)[0].score == pytest.approx(1.0)
    return v


def test_readers_never_see_a_half_written_gallery(tmp_path):
    """Before the fix, Gallery.open read the files by name one after another, so a save landing in between mixed two
    versions ('gallery is inconsistent', 'mmap length is greater than file size', or silently a foreign index)."""
    dest = tmp_path / "g"
    subprocess.run([sys.executable, "-c", WRITER_SCRIPT, str(dest), "0", "1"], env=ENV, check=True,
                   capture_output=True)  # fmt: skip
    held = Gallery.open(dest)  # memory-mapped, held across all the replacements below
    assert check_version(held) == 0
    writer = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(dest), "1", "400"], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    seen, reads = set(), 0
    killed = False
    try:
        while writer.poll() is None:
            seen.add(check_version(Gallery.open(dest)))
            reads += 1
            if len(seen) >= 80 and not killed:  # kill the writer at a random point of a save
                time.sleep(float(np.random.default_rng().uniform(0, 0.01)))
                sigkill(writer)
                killed = True
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert killed, f"the writer finished before it could be killed ({len(seen)} versions seen)"
    assert reads >= 80 and len(seen) >= 80, (reads, len(seen))
    last = check_version(Gallery.open(dest))  # after the kill: one complete version
    assert last >= max(seen)
    assert check_version(held) == 0  # the gallery opened first still reads its own version
    # the next save removes what the killed writer left
    subprocess.run([sys.executable, "-c", WRITER_SCRIPT, str(dest), "1000", "1"], env=ENV, check=True,
                   capture_output=True)  # fmt: skip
    assert check_version(Gallery.open(dest)) == 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


# ---------------------------------------------------------------------------------------------------------------
# b. training
# ---------------------------------------------------------------------------------------------------------------

STEPS, SAVE_EVERY = 24, 3

# The stage-1 recipe with accelerate's save_state replaced by one that writes the state, tears its weights file in
# half and SIGKILLs the process: a kill in the middle of the save of step KILL_AT_SAVE.
TEAR_SAVE_SCRIPT = textwrap.dedent(
    """
    import json, os, runpy, signal, sys
    from pathlib import Path
    import accelerate

    original = accelerate.Accelerator.save_state
    def torn_save(self, output_dir=None, **kwargs):
        out = original(self, output_dir, **kwargs)
        step_file = Path(os.environ["RUN_OUT"]) / "state" / "step.json"
        done = json.loads(step_file.read_text())["step"] if step_file.is_file() else 0
        if done + int(os.environ["SAVE_EVERY"]) >= int(os.environ["KILL_AT_SAVE"]):
            f = Path(output_dir) / "model.safetensors"
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    accelerate.Accelerator.save_state = torn_save
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


@pytest.fixture(scope="module")
def world_cache(tmp_path_factory) -> Path:
    """The rendered training set, built once with the recipe's own arguments (so every run below loads it)."""
    from duetgen import world
    from duetgen import world_dataset as wd

    cache = tmp_path_factory.mktemp("world") / "cache.npz"
    wd.load_or_build(cache, 12, seed=1000, size=64, shapes=tuple(world.SHAPES))
    return cache


def stage1_cmd(out: Path, cache: Path, *extra: str) -> list[str]:
    return [str(RECIPES / "train_world_clip.py"), "--out", str(out), "--arch", "duetgen-tiny", "--batch", "16",
            "--groups", "12", "--cache", str(cache), "--steps", str(STEPS), "--save-every", str(SAVE_EVERY),
            "--log-every", "1", "--warmup", "2", *extra]  # fmt: skip


def saved_step(out: Path) -> int:
    try:
        return json.loads((out / "state" / "step.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    (f,) = folder.glob("*.safetensors")
    return load_file(f)


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_training_killed_and_resumed_is_bit_identical(tmp_path, world_cache):
    ref, run = tmp_path / "uninterrupted", tmp_path / "interrupted"
    # the reference: one uninterrupted run
    r = subprocess.run([sys.executable, *stage1_cmd(ref, world_cache)], env=ENV, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]

    # 1. SIGKILL from outside, at a random moment after the first saves
    proc = subprocess.Popen([sys.executable, *stage1_cmd(run, world_cache)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    wait_for(lambda: saved_step(run) >= 2 * SAVE_EVERY, proc, what="the second saved state")
    time.sleep(float(np.random.default_rng().uniform(0, 0.05)))
    sigkill(proc)
    first_kill = saved_step(run)
    assert 2 * SAVE_EVERY <= first_kill < STEPS
    good = {p.name: p.read_bytes() for p in (run / "state").iterdir()}

    # 2. resumed, then killed in the middle of its first save (the weights file half written)
    env = {**ENV, "RUN_OUT": str(run), "SAVE_EVERY": str(SAVE_EVERY), "KILL_AT_SAVE": str(first_kill + SAVE_EVERY)}
    r = subprocess.run([sys.executable, "-c", TEAR_SAVE_SCRIPT, *stage1_cmd(run, world_cache, "--resume")], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert f"resumed at step {first_kill}" in r.stdout
    # the last good state is intact, byte for byte, and still the one step.json names
    assert {p.name: p.read_bytes() for p in (run / "state").iterdir()} == good
    assert saved_step(run) == first_kill

    # 3. resumed again: runs to the end
    r = subprocess.run([sys.executable, *stage1_cmd(run, world_cache, "--resume")], env=ENV, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed at step {first_kill}" in r.stdout
    assert not list(run.glob(".state.*")), "temporary state folders were left behind"

    # the final weights, the final state and every logged loss equal the uninterrupted run's, bit for bit
    assert_bitwise_equal(tensors(run / "encoder"), tensors(ref / "encoder"))
    assert_bitwise_equal(*(load_file(d / "state" / "model.safetensors") for d in (run, ref)))
    opt_run = torch.load(run / "state" / "optimizer.bin", weights_only=True)
    opt_ref = torch.load(ref / "state" / "optimizer.bin", weights_only=True)
    for k, s in opt_ref["state"].items():
        for name, t in s.items():
            assert torch.equal(opt_run["state"][k][name], t), (k, name)
    logs = [[json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()] for d in (run, ref)]
    assert [r["step"] for r in logs[0]] == list(range(STEPS))  # each step logged once, in order
    assert [(r["step"], r["loss"], r["lr"]) for r in logs[0]] == [(r["step"], r["loss"], r["lr"]) for r in logs[1]]


# ---------------------------------------------------------------------------------------------------------------
# c. batch generation
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipe_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "pipe"
    make_tiny_pipeline(random_null=False).save_pretrained(path)
    return path


def test_batch_generation_killed_keeps_whole_pngs_and_a_rerun_skips_them(tmp_path, tiny_pipe_dir, capsys):
    from duetgen import world

    sketches = []
    for i in range(3):
        rng = np.random.default_rng([7, i])
        sketches.append(tmp_path / f"s{i}.png")
        Image.fromarray(world.render_sketch(world.sample_instance(rng), 64, seed=i)).save(sketches[-1])
    n_rows = 12
    rows = tmp_path / "rows.csv"
    rows.write_text("sketch,words,seed\n" + "".join(f"{sketches[i % 3]},word {i},\n" for i in range(n_rows)))
    out = tmp_path / "out"
    images = out / "images"
    argv = [str(rows), "--out", str(out), "--model", str(tiny_pipe_dir), "--steps", "30", "--batch", "1"]
    proc = subprocess.Popen([sys.executable, str(RECIPES / "sketch_text_generation.py"), *argv], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip

    def three_done() -> bool:  # meanwhile: every file under a final name is a whole PNG
        finished = list(images.glob("*.png")) if images.is_dir() else []
        assert all(valid_png(p) for p in finished)
        return len(finished) >= 3

    wait_for(three_done, proc, what="three finished images")
    sigkill(proc)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in images.glob("*.png")}
    assert 3 <= len(before) < n_rows, "the run finished before it could be interrupted"
    assert all(valid_png(images / name) for name in before)

    spec = importlib.util.spec_from_file_location("stg", RECIPES / "sketch_text_generation.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    capsys.readouterr()
    assert recipe.main(argv[:-2] + ["--batch", "4"]) == 0
    said = capsys.readouterr().out
    assert f"done {n_rows - len(before)}, skipped {len(before)} (already done), failed 0 of {n_rows} rows" in said
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in images.glob("*.png")}
    assert len(after) == n_rows and {k: after[k] for k in before} == before  # finished outputs untouched
    assert all(valid_png(images / name) for name in after)
    assert not [p for p in images.iterdir() if p.name.startswith(".")]  # no temporary file left
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["row"] for m in manifest] == list(range(n_rows)) and {m["status"] for m in manifest} == {"done"}
    assert valid_png(out / "grid.png")


def test_generator_recipe_resume_is_bit_identical(tmp_path, tiny_encoder_dir, world_cache):
    """recipes/train_generator.py seeded its noise generator once per run with (seed, start step), so a resumed run
    drew other noise than an uninterrupted one from the resume step on; it now draws from (seed, step)."""
    spec = importlib.util.spec_from_file_location("train_generator_cs", RECIPES / "train_generator.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    tiny = ["--encoder", str(tiny_encoder_dir), "--cache", str(world_cache), "--groups", "12", "--batch-size", "4",
            "--block-out-channels", "8,16", "--attention-levels", "1", "--cross-attention-dim", "16",
            "--log-every", "1", "--save-every", "2", "--threads", "1", "--warmup", "1"]  # fmt: skip
    recipe.main(["--out", str(tmp_path / "ref"), "--steps", "4", *tiny])

    class Crash(Exception):
        pass

    real_save = recipe.save_training_state

    def save_then_crash(acc, state_dir, step, *args, **kwargs):  # the run dies right after saving step 2
        real_save(acc, state_dir, step, *args, **kwargs)
        if step == 2:
            raise Crash

    recipe.save_training_state = save_then_crash
    with pytest.raises(Crash):
        recipe.main(["--out", str(tmp_path / "run"), "--steps", "4", *tiny])
    recipe.save_training_state = real_save
    recipe.main(["--out", str(tmp_path / "run"), "--steps", "4", "--resume", *tiny])
    assert_bitwise_equal(*(load_file(tmp_path / d / "state" / "model.safetensors") for d in ("run", "ref")))
    logs = [[json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("run", "ref")]
    assert [(r["step"], r["loss"]) for r in logs[0]] == [(r["step"], r["loss"]) for r in logs[1]]
