"""Safe checkpoint loading: diffusers' ``save_pretrained`` layout (``config.json`` + ``*.safetensors``), never pickle.

diffusers' ``from_pretrained`` would fall back to a pickled ``.bin`` when no safetensors file is present; duetgen
refuses such folders before diffusers sees them, and refuses configs with keys the class does not take.

A hostile or corrupt folder is refused before anything large is allocated: the config's values must have the types
of the class's defaults, the safetensors headers are read (bounded) and checked, and the model the config
describes is built on the ``meta`` device (no memory) and compared, tensor by tensor, with the shapes in the
weights file. So a config that declares a 10^8-word vocabulary or 10^6 layers next to small weights is refused in
milliseconds instead of allocating gigabytes, and a config that does not match its weights is refused instead of
loading a model with missing or ignored layers.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import struct
from pathlib import Path

from .errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_CONFIG_BYTES = 1_000_000
MAX_SAFETENSORS_HEADER = 100_000_000  # bytes of one safetensors JSON header (the safetensors library's own bound)
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # the file diffusers' from_pretrained reads
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"  # sharded weights
_FIX_CONFIG = "restore the config.json saved with these weights (save_pretrained writes both)"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _read_config(path: Path, what: str) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(
            f"'{path}' is not a {what} checkpoint: it has no config.json; pass a folder written by save_pretrained"
        )
    if cfg_file.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"config.json in '{path}' is over {MAX_CONFIG_BYTES:,} bytes; refusing to parse it: {_FIX_CONFIG}"
        )
    try:
        cfg = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise CheckpointError(
            f"config.json in '{path}' is not valid JSON ({_first_line(err)}): {_FIX_CONFIG}"
        ) from err
    if not isinstance(cfg, dict):
        raise CheckpointError(f"config.json in '{path}' is not a JSON object: {_FIX_CONFIG}")
    return cfg


def _kind(value) -> str:
    """The JSON kind of a default value: bool, int, number, str, list or dict (None: anything goes)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return ""


def _matches(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list)
    if kind == "dict":
        return isinstance(value, dict)
    return True


def _check_config_types(path: Path, cls, cfg: dict) -> None:
    """Each config value must have the JSON kind of the class's default for that argument (None defaults: any)."""
    params = inspect.signature(cls.__init__).parameters
    for key, value in cfg.items():
        param = params.get(key)
        if param is None or param.default is inspect.Parameter.empty or value is None:
            if param is not None and param.default is inspect.Parameter.empty and value is None:
                raise CheckpointError(
                    f"config.json in '{path}': {key!r} is null but {cls.__name__} needs it: {_FIX_CONFIG}"
                )
            continue
        kind = _kind(param.default)
        if kind and not _matches(value, kind):
            raise CheckpointError(
                f"config.json in '{path}': {key!r} must be {'an' if kind == 'int' else 'a'} {kind} (like its default "
                f"{param.default!r:.40}), got {json.dumps(value)[:60]}: {_FIX_CONFIG}"
            )


def _safetensors_header(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header, read without loading any tensor.

    Raises:
        CheckpointError: the file is truncated or its header is malformed.
    """
    size = file.stat().st_size
    bad = f"'{file}' is not a valid safetensors file"
    fix = "re-save the weights with save_pretrained(..., safe_serialization=True)"
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{bad} ({size} bytes, truncated): {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER or n > size - 8:
            raise CheckpointError(f"{bad} (header of {n:,} bytes in a file of {size:,}; truncated or corrupt): {fix}")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{bad} (header is not JSON: {_first_line(err)}): {fix}") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad} (header is not a JSON object): {fix}")
    shapes = {}
    data_bytes = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(entry, dict) and isinstance(entry.get("shape"), list) and isinstance(entry.get("dtype"), str)
        offsets = entry.get("data_offsets") if ok else None
        ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
        ok = ok and isinstance(offsets, list) and len(offsets) == 2
        ok = ok and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        if not ok or not 0 <= offsets[0] <= offsets[1] <= data_bytes:
            raise CheckpointError(f"{bad} (entry {name!r:.60} is malformed or points past the end of the file): {fix}")
        shapes[name] = tuple(entry["shape"])
    return shapes


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the tensors diffusers will load from ``path`` (None if it will find no weights file)."""
    single = path / WEIGHTS_NAME
    if single.is_file():
        return _safetensors_header(single)
    index_file = path / WEIGHTS_INDEX_NAME
    if not index_file.is_file():
        return None
    try:
        index = json.loads(index_file.read_bytes()[: MAX_CONFIG_BYTES * 10].decode("utf-8"))
        shard_names = sorted(set(index["weight_map"].values()))
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"'{index_file}' is not a valid weights index ({_first_line(err)}): re-save the model with save_pretrained"
        ) from err
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in shard_names:
        shard_file = path / str(shard)
        if not (isinstance(shard, str) and shard_file.is_file() and shard_file.parent == path):
            raise CheckpointError(f"'{index_file}' names a missing weights shard {shard!r:.80}: copy the whole folder")
        shapes.update(_safetensors_header(shard_file))
    return shapes


class _TooBig(Exception):
    pass


@contextlib.contextmanager
def _size_guard(max_tensors: int, max_numel: int):
    """Abort a model build (raise _TooBig) once it registers more tensors or elements than the weights hold."""
    import torch.nn.modules.module as module_mod

    count = [0, 0]

    def on_tensor(module, name, tensor):
        if tensor is not None:
            count[0] += 1
            count[1] += tensor.numel()
            if count[0] > max_tensors or count[1] > max_numel:
                raise _TooBig(f"at least {count[1]:,} values in {count[0]} tensors")
        return None

    handles = [
        module_mod.register_module_parameter_registration_hook(on_tensor),
        module_mod.register_module_buffer_registration_hook(on_tensor),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _check_config_matches_weights(path: Path, cls, cfg: dict, weights: dict[str, tuple[int, ...]], what: str) -> None:
    """Build the model the config describes on the meta device and compare its tensors with the weights file."""
    import torch

    n_weights = sum(math.prod(s) for s in weights.values())
    init_kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    try:
        with _size_guard(2 * len(weights) + 64, 2 * n_weights + 1_000_000), torch.device("meta"):
            model = cls(**init_kwargs)
    except _TooBig as err:
        raise CheckpointError(
            f"config.json in '{path}' describes a {cls.__name__} far larger than its weights ({err}, against "
            f"{n_weights:,} values in {len(weights)} tensors in the weights): {_FIX_CONFIG}"
        ) from None
    except Exception as err:  # noqa: BLE001 - the class rejects its own arguments with any exception type
        raise CheckpointError(
            f"config.json in '{path}' does not describe a valid {what} ({type(err).__name__}: {_first_line(err)}): "
            f"{_FIX_CONFIG}"
        ) from err
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if expected[k] != weights[k])
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"config.json in '{path}' does not match its weights: {k!r} is {list(weights[k])} in the weights but "
            f"{list(expected[k])} by the config ({len(wrong)} tensors differ): {_FIX_CONFIG}"
        )
    if missing or unexpected:
        detail = f"{len(missing)} tensors missing (first {missing[0]!r})" if missing else ""
        if unexpected:
            detail += f"{', ' if detail else ''}{len(unexpected)} not used by the config (first {unexpected[0]!r:.80})"
        raise CheckpointError(f"config.json in '{path}' does not match its weights: {detail}: {_FIX_CONFIG}")


def check_model_folder(path: str | os.PathLike, cls, what: str | None = None) -> dict:
    """Validates a ``save_pretrained`` folder of ``cls`` and returns its config.

    Checks, in order: a folder with a ``config.json`` (at most ``MAX_CONFIG_BYTES``) holding a JSON object of this
    class with no unknown keys; no pickled weight files; ``.safetensors`` weights with well-formed headers; config
    values of the types the class takes; and a model built from the config on the ``meta`` device whose tensors have
    exactly the names and shapes of the weights.

    Raises:
        CheckpointError: any of the above fails; the one-line message names the problem and the fix.
    """
    path = Path(path)
    what = what or cls.__name__
    if not path.is_dir():
        raise CheckpointError(f"{what} checkpoint '{path}' is not a folder; pass a folder written by save_pretrained")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"'{path}' contains pickled files {pickles}; duetgen never unpickles checkpoints: convert them to "
            "safetensors and remove them"
        )
    cfg = _read_config(path, what)
    cls_name = cfg.get("_class_name")
    if cls_name is not None and cls_name != cls.__name__:
        raise CheckpointError(f"'{path}' holds a {cls_name!r:.80}, not a {cls.__name__}; pass a {what} folder")
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in params)
    if unknown:
        shown = [k[:40] for k in unknown[:5]] + (["..."] if len(unknown) > 5 else [])
        raise CheckpointError(
            f"config.json in '{path}' has keys {cls.__name__} does not take: {shown}; remove them or {_FIX_CONFIG}"
        )
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(
            f"'{path}' has no .safetensors weights; save the model with save_pretrained(..., safe_serialization=True)"
        )
    _check_config_types(path, cls, cfg)
    weights = _weight_shapes(path)
    if weights is not None:
        _check_config_matches_weights(path, cls, cfg, weights, what)
    return cfg


def load_model_folder(path: str | os.PathLike, cls, what: str | None = None, **kwargs):
    """``cls.from_pretrained(path)`` after :func:`check_model_folder`; safetensors only."""
    check_model_folder(path, cls, what)
    try:
        return cls.from_pretrained(str(path), use_safetensors=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - diffusers, safetensors and the class raise many types
        raise CheckpointError(
            f"cannot load {what or cls.__name__} from '{path}' ({type(err).__name__}: {_first_line(err)}); "
            "re-save it with save_pretrained"
        ) from err
