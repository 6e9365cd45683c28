"""Safe checkpoint loading: diffusers' ``save_pretrained`` layout (``config.json`` + ``*.safetensors``), never pickle.

diffusers' ``from_pretrained`` would fall back to a pickled ``.bin`` when no safetensors file is present; duetgen
refuses such folders before diffusers sees them, and refuses configs with keys the class does not take.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

from .errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_CONFIG_BYTES = 1_000_000


def check_model_folder(path: str | os.PathLike, cls, what: str | None = None) -> dict:
    """Validates a ``save_pretrained`` folder of ``cls`` and returns its config.

    Raises:
        CheckpointError: not a folder, no/invalid ``config.json``, a config of another class or with unknown keys,
            no ``.safetensors`` weights, or pickled weight files present.
    """
    path = Path(path)
    what = what or cls.__name__
    if not path.is_dir():
        raise CheckpointError(f"{what} checkpoint '{path}' is not a folder; pass a folder written by save_pretrained")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"'{path}' is not a {what} checkpoint: it has no config.json")
    if cfg_file.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"config.json in '{path}' is over {MAX_CONFIG_BYTES} bytes; refusing to parse it")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"config.json in '{path}' is not valid JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise CheckpointError(f"config.json in '{path}' is not a JSON object")
    cls_name = cfg.get("_class_name")
    if cls_name is not None and cls_name != cls.__name__:
        raise CheckpointError(f"'{path}' holds a {cls_name}, not a {cls.__name__}; pass a {what} folder")
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in params)
    if unknown:
        raise CheckpointError(f"config.json in '{path}' has keys {cls.__name__} does not take: {unknown}")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"'{path}' contains pickled files {pickles}; duetgen never unpickles checkpoints: convert them to "
            "safetensors and remove them"
        )
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"'{path}' has no .safetensors weights")
    return cfg


def load_model_folder(path: str | os.PathLike, cls, what: str | None = None, **kwargs):
    """``cls.from_pretrained(path)`` after :func:`check_model_folder`; safetensors only."""
    check_model_folder(path, cls, what)
    try:
        return cls.from_pretrained(str(path), use_safetensors=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"cannot load {what or cls.__name__} from '{path}': {str(err).splitlines()[0]}") from err
