"""ClassSplit: seen (train) / unseen (test) class lists for zero-shot retrieval, and the shipped split files.

Shipped splits (``duetgen/splits/``), loadable by name with :func:`load_class_split`:

- ``"sketchy_zs_unseen21"``: Sketchy's standard zero-shot split (Yelamarthi et al., ECCV 2018): 21 unseen classes,
  the other 104 of Sketchy's 125 classes seen.
- ``"sketchy128_zs"``: 83 train / 21 test classes of duetgen's ``sketchy128`` sample. The sample holds exactly the
  104 standard seen classes, so none of the standard unseen classes is in it; its 21 test classes come from
  :func:`make_class_split` (SHA-256 order).

User split files: JSON ``{"train": [...], "test": [...]}``, or text with one (unseen / test) class per line
(``#`` comments and blank lines ignored); for a text file the train classes are the other ``classes`` given.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from duetgen.errors import DuetgenInputError

from ._common import read_text_file

SPLITS_DIR = Path(__file__).resolve().parent.parent / "splits"
SKETCHY_CLASSES_FILE = SPLITS_DIR / "sketchy_classes125.txt"
_BUILTIN = {"sketchy_zs_unseen21": "sketchy_zs_unseen21.txt", "sketchy128_zs": "sketchy128_zs.json"}


@dataclass(frozen=True)
class ClassSplit:
    """A class split.

    Attributes:
        train: seen classes, sorted; None when a one-class-per-line file was loaded without ``classes``.
        test: unseen classes, sorted.
        name: where the split came from (built-in name or file path).
    """

    train: tuple[str, ...] | None
    test: tuple[str, ...]
    name: str = ""


def list_class_splits() -> list[str]:
    """Names of the built-in splits."""
    return sorted(_BUILTIN)


_EXPECTED = 'a JSON {"train": [...], "test": [...]} or a text file with one class per line'


def _read_lines(path: Path) -> list[str]:
    out = []
    for line in read_text_file(path, "class split", _EXPECTED).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def sketchy_classes() -> list[str]:
    """Sketchy's 125 class names (folder spelling, e.g. ``car_(sedan)``), sorted."""
    return _read_lines(SKETCHY_CLASSES_FILE)


def _names(value: object, path: Path, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise DuetgenInputError(f"class split '{path}': \"{key}\" must be a list of class names")
    if len(set(value)) != len(value):
        raise DuetgenInputError(f"class split '{path}': \"{key}\" lists a class twice")
    return tuple(sorted(value))


def load_class_split(path_or_name: str | os.PathLike, classes: Sequence[str] | None = None) -> ClassSplit:
    """Load a class split by built-in name or from a file.

    Args:
        path_or_name: ``"sketchy_zs_unseen21"``, ``"sketchy128_zs"``, or a path to a JSON
            ``{"train": [...], "test": [...]}`` file or a text file with one test class per line.
        classes: every class of the dataset; for a text file, train = these minus the test classes.
            The built-in ``sketchy_zs_unseen21`` defaults to Sketchy's 125 classes.

    Returns:
        A :class:`ClassSplit` with sorted, disjoint train and test classes.

    Raises:
        DuetgenInputError: unknown name, missing file, malformed content, or a class in both train and test.
    """
    key = str(path_or_name)
    if key in _BUILTIN:
        path = SPLITS_DIR / _BUILTIN[key]
        if key == "sketchy_zs_unseen21" and classes is None:
            classes = sketchy_classes()
    else:
        path = Path(path_or_name)
        if not path.is_file():
            raise DuetgenInputError(
                f"class split '{path}' is neither a built-in split {list_class_splits()} nor an existing file; "
                'expected a JSON {"train": [...], "test": [...]} or a text file with one class per line'
            )
    name = key if key in _BUILTIN else str(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(read_text_file(path, "class split", _EXPECTED))
        except (ValueError, RecursionError) as e:  # JSONDecodeError, or nested too deep
            detail = str(e) if isinstance(e, ValueError) else "nested too deep"
            raise DuetgenInputError(f"class split '{path}' is not valid JSON ({detail}); expected {_EXPECTED}") from e
        if not isinstance(data, dict) or "train" not in data or "test" not in data:
            raise DuetgenInputError(f'class split \'{path}\' must be a JSON object with "train" and "test" lists')
        train, test = _names(data["train"], path, "train"), _names(data["test"], path, "test")
        both = sorted(set(train) & set(test))
        if both:
            raise DuetgenInputError(f"class split '{path}' puts {both[:5]} in both train and test")
        return ClassSplit(train=train, test=test, name=name)
    test = _read_lines(path)
    if not test:
        raise DuetgenInputError(f"class split '{path}' lists no class; expected one class per line")
    test_t = _names(test, path, "test")
    train = None if classes is None else tuple(sorted(c for c in classes if c not in set(test_t)))
    return ClassSplit(train=train, test=test_t, name=name)


def make_class_split(
    classes: Sequence[str], n_test: int = 21, preferred: Sequence[str] = (), *, salt: str = ""
) -> ClassSplit:
    """A deterministic split of ``classes`` into train and ``n_test`` test classes.

    Test classes are the ``preferred`` ones present in ``classes`` (in their order), topped up with the remaining
    classes ordered by the SHA-256 hex digest of ``salt + name`` (UTF-8). Independent of Python's hash seed and
    of the order of ``classes``. ``sketchy128_zs.json`` is ``make_class_split(sketchy128 classes, 21,
    preferred=sketchy_zs_unseen21)``.
    """
    classes = sorted(set(classes))
    if not 0 < n_test < len(classes):
        raise DuetgenInputError(f"n_test must be in 1..{len(classes) - 1} for {len(classes)} classes; got {n_test}")
    test = [c for c in preferred if c in classes][:n_test]
    by_hash = sorted(classes, key=lambda c: hashlib.sha256((salt + c).encode("utf-8")).hexdigest())
    for c in by_hash:
        if len(test) >= n_test:
            break
        if c not in test:
            test.append(c)
    return ClassSplit(train=tuple(c for c in classes if c not in test), test=tuple(sorted(test)), name="generated")
