"""Hostile files are refused with a clear one-line duetgen error, quickly and with bounded memory.

The cases (``tests/hostile_cases.py``): SVG with external entities (XXE on ``file:///etc/passwd``, also as a
parameter entity and in UTF-16) and billion-laughs expansion, deeply nested SVG; PNGs and a JPEG declaring
60000x60000 / 65000x65000 pixels (through ``read_sketch`` and the dataset loaders); an animated GIF of 5,000 frames;
a zip-bomb and a malicious-pickle sketch-rnn ``.npz``; JSON nested 200,000 deep; ``duetgen index`` on a folder
with symlink loops and a link to ``/dev/zero``; checkpoint folders holding pickles, unexpected config keys, or a
config that describes a model far larger than (or different from) its weights.

Each test asserts the error type, that the message is one line naming the problem and the fix, the time bound, and
that the process's peak RSS grew by less than the case's bound (the per-case peak is measured in a fresh process by
``benchmarks/bench_hostile_files.py``). The animated GIF and the symlink loops are not errors: the GIF is read from
its first frame and the loops are skipped and reported.
"""

from __future__ import annotations

import re
import resource
import time

import pytest
from hostile_cases import BY_NAME, CASES, PWNED


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_hostile_file_is_refused_quickly(tmp_path, name):
    case = BY_NAME[name]
    PWNED.unlink(missing_ok=True)
    case.make(tmp_path)
    for module in case.imports:  # imports are not the case's cost
        __import__(module)
    before = _peak_rss_mb()
    start = time.perf_counter()
    if case.expect is None:
        result = case.run(tmp_path)
        text = result if isinstance(result, str) else ""
    else:
        with pytest.raises(case.expect) as info:
            case.run(tmp_path)
        text = str(info.value)
        assert text.strip() and "\n" not in text.strip(), f"message is not one line: {text!r}"
    elapsed = time.perf_counter() - start
    grew = _peak_rss_mb() - before
    for pattern in case.match:
        assert re.search(pattern, text), f"{name}: {pattern!r} not in {text!r}"
    assert elapsed < case.seconds, f"{name} took {elapsed:.2f} s (bound {case.seconds} s)"
    assert grew < case.extra_mb, f"{name} raised peak RSS by {grew:.0f} MB (bound {case.extra_mb} MB)"
    assert not PWNED.exists(), "a pickle payload ran"


def test_xxe_never_reads_the_entity_target(tmp_path):
    """The refusal happens before the XML parser sees the DOCTYPE: no part of /etc/passwd can reach the output."""
    from hostile_cases import XXE

    from duetgen.errors import DuetgenInputError
    from duetgen.sketch_input import read_sketch

    with pytest.raises(DuetgenInputError) as info:
        read_sketch(XXE.replace(b"/etc/passwd", str(tmp_path / "secret").encode()))
    assert "root:" not in str(info.value)


def test_gif_reads_only_the_first_frame(tmp_path):
    """5,000 frames decode no slower than one: the frames after the first are never touched."""
    import numpy as np
    from hostile_cases import gif_many_frames

    from duetgen.sketch_input import read_sketch

    many, one = gif_many_frames(5000, 128), gif_many_frames(1, 128)
    t0 = time.perf_counter()
    a = read_sketch(many, size=64)
    t_many = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = read_sketch(one, size=64)
    t_one = time.perf_counter() - t0
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert t_many < 10 * t_one + 0.2, (t_many, t_one)


def test_python2_sketch_rnn_pickles_still_load():
    """The safe unpickler builds the same arrays as numpy's own loader from a Python 2 era sketch-rnn .npz."""
    import io
    import zipfile

    import numpy as np
    from hostile_cases import py2_object_npz

    from duetgen.sketch_input import _read_npy, read_sketch

    data = py2_object_npz(1)
    raw = zipfile.ZipFile(io.BytesIO(data)).read("train.npy")
    ours = _read_npy(raw, "train")
    theirs = np.load(io.BytesIO(raw), allow_pickle=True, encoding="latin1")
    assert ours.dtype == object and ours.shape == theirs.shape == (1,)
    assert ours[0].dtype == theirs[0].dtype and np.array_equal(ours[0], theirs[0])
    assert read_sketch(data, size=32).size == (32, 32)
