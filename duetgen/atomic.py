"""Crash-safe folder writes: build a complete temporary sibling, fsync it, swap it in with one rename.

A process killed at any moment (``kill -9``, power cut after the fsyncs) leaves either the previous folder or the
new one under the final name, never a mix; at worst a stale temporary folder beside it, which the next write
removes. Used by :meth:`duetgen.gallery.Gallery.save` and by the training recipes' resumable state
(:func:`save_training_state` / :func:`load_training_state`).

The swap is ``renameat2(RENAME_EXCHANGE)`` on Linux (one atomic step, so readers always find the folder);
elsewhere two renames (``dest -> .dest.old-*``, ``tmp -> dest``), and :func:`recover_folder` puts the previous
version back if a process died between them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

STEP_FILE = "step.json"
"""Written last into a training-state folder: its presence marks the folder complete."""


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory (its entries), where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under ``folder`` (the folder included)."""
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(dirpath)


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swaps two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    except OSError:  # pragma: no cover - e.g. Windows without such a process
        return False
    return True


def temp_sibling(dest: Path, tag: str | None = None) -> Path:
    """``.NAME.tmp-PID-RANDOM`` beside ``dest`` (or ``.NAME.tmp-TAG`` when several processes must agree on it)."""
    suffix = tag if tag is not None else f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return dest.parent / f".{dest.name}.tmp-{suffix}"


def remove_stale_temps(dest: Path, *, any_pid: bool = False) -> None:
    """Removes temporary siblings of ``dest`` left by dead processes (all of them with ``any_pid``)."""
    for p in dest.parent.glob(f".{dest.name}.tmp-*"):
        if not any_pid:
            try:
                pid = int(p.name.rsplit(".tmp-", 1)[1].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and pid_alive(pid):
                continue
        shutil.rmtree(p, ignore_errors=True)


def recover_folder(dest: Path, marker: str) -> None:
    """After a crash between the two renames of a non-exchange swap, puts the previous version back."""
    if dest.exists():
        return
    olds = sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and (olds[-1] / marker).is_file():
        os.rename(olds[-1], dest)


def swap_in(tmp: Path, dest: Path) -> None:
    """Makes the complete folder ``tmp`` the new ``dest`` in one atomic step and removes the previous version."""
    fsync_dir(tmp)
    if not dest.exists():
        os.rename(tmp, dest)
    elif exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous version
    else:  # pragma: no cover - non-Linux
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dest.parent)


def write_folder_atomic(dest: str | os.PathLike, write: Callable[[Path], None], *, marker: str) -> Path:
    """Runs ``write(tmp_folder)``, fsyncs what it wrote and swaps it in as ``dest``.

    Args:
        dest: the folder to (re)place.
        write: fills the empty temporary folder it is given.
        marker: a file every complete version holds (used to recover from a crash between two renames).
    """
    dest = Path(os.path.abspath(os.path.expanduser(str(dest))))
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(dest, marker)
    remove_stale_temps(dest)
    tmp = temp_sibling(dest)
    tmp.mkdir()
    try:
        write(tmp)
        fsync_tree(tmp)
        swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# ---------------------------------------------------------------------------------------------------------------
# training state (accelerate)
# ---------------------------------------------------------------------------------------------------------------


def save_training_state(acc, state_dir: str | os.PathLike, step: int, extra: dict | None = None) -> Path:
    """``acc.save_state`` made crash-safe: every process saves into one temporary sibling folder, the main process
    writes ``step.json`` (``{"step": step, **extra}``) last, fsyncs and swaps the folder in.

    A kill at any moment leaves ``state_dir`` holding the previous complete state (or the new one): never a state
    whose weights and ``step.json`` disagree, never a torn file. Call it from every process.
    """
    state_dir = Path(os.path.abspath(state_dir))
    tmp = temp_sibling(state_dir, f"step{int(step)}")
    acc.wait_for_everyone()
    if acc.is_main_process:
        recover_folder(state_dir, STEP_FILE)
        remove_stale_temps(state_dir, any_pid=True)  # one trainer per run folder: every temp is stale
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / STEP_FILE).write_text(json.dumps({"step": int(step), **(extra or {})}))
        fsync_tree(tmp)
        swap_in(tmp, state_dir)
    acc.wait_for_everyone()
    return state_dir


def load_training_state(acc, state_dir: str | os.PathLike) -> dict | None:
    """Loads the state saved by :func:`save_training_state` into ``acc`` (model, optimiser, scheduler, RNG states,
    registered objects) and returns the ``step.json`` record, or ``None`` when there is no complete state."""
    state_dir = Path(os.path.abspath(state_dir))
    if acc.is_main_process:
        recover_folder(state_dir, STEP_FILE)
    acc.wait_for_everyone()
    if not (state_dir / STEP_FILE).is_file():
        return None
    acc.load_state(str(state_dir))
    return json.loads((state_dir / STEP_FILE).read_text())


def truncate_log(path: str | os.PathLike, before_step: int, key: str = "step") -> None:
    """Keeps the JSONL records of ``path`` whose ``key`` is below ``before_step`` (a resumed run rewrites the rest),
    dropping a line torn by a kill; rewritten atomically."""
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get(key), (int, float)) and rec[key] < before_step:
            keep.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)
