"""Property-based fuzzing of every input parser: random and mutated inputs parse or are refused with a duetgen error.

For each parser (see ``tests/fuzz_corpus.py``): raster images, SVG, QuickDraw ndjson and sketch-rnn stroke-3 through
``read_sketch``; in-memory arrays and tensors; the QuickDraw / Sketchy / QMUL dataset loaders and class-split files;
the world-groups cache; each file of a gallery folder; a checkpoint's ``config.json`` and weights through
``load_encoder``. Inputs are valid seed files mutated by hypothesis-drawn ops (bit flips, interesting integers,
insertions, deletions, truncations, splices, number/token replacement, structural JSON edits), random bytes behind a
format's magic, and random documents from a format's grammar.

Property: the parser returns, or raises the parser's duetgen error (``DuetgenInputError``; ``CheckpointError`` for
checkpoints; any ``DuetgenError`` for galleries) with a one-line message; never another exception, never a hang
(hypothesis deadline plus a hard per-example alarm) and never more memory than a fixed cap (RLIMIT_AS).

Runs in well under a minute on one core with the default example counts. ``DUETGEN_FUZZ_EXAMPLES=2000`` raises the
examples per parser (and draws fresh random examples instead of the fixed derandomized ones); the long seeded run is
``benchmarks/fuzz_inputs.py``.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta

import numpy as np
import pytest
from fuzz_corpus import (
    JSON_OPS,
    N_OP_KINDS,
    apply_ops,
    build_targets,
    classify,
    memory_limit,
    random_array,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from duetgen.errors import DuetgenInputError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")  # PIL on corrupt files

LONG = int(os.environ.get("DUETGEN_FUZZ_EXAMPLES", "0") or 0)
BASE_EXAMPLES = LONG or 150  # per parser, divided by the parser's cost
PER_EXAMPLE_S = 20.0  # hard bound (SIGALRM) on one example: a hang fails the test
DEADLINE = timedelta(seconds=5)  # hypothesis' own per-example deadline
MEMORY_CAP = 2 * 2**30  # address space one example may add (RLIMIT_AS)

SETTINGS = dict(
    deadline=DEADLINE,
    derandomize=not LONG,  # fixed examples in the default suite; fresh ones in a long run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# Minimal repros of bugs the fuzzer found (fixed; kept as explicit examples so they stay fixed).
GALLERY_REPROS = {
    "gallery_manifest": b'{"kind": "duetgen-gallery", "format_version": 1}',
    "gallery_items": b"not json\n",
    "gallery_embeddings": b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',\n",
    "gallery_index": b"IxF2garbage",
    "gallery_regions": b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f2',\n",
}
WORLD_REPRO = b"not json"

PARSERS = [
    "raster",
    "svg",
    "quickdraw",
    "stroke3",
    "quickdraw_dataset",
    "quickdraw_npy",
    "class_split",
    "dataset_images",
    "qmul_split",
    "checkpoint_config",
    "checkpoint_weights",
    "world_groups",
    "gallery_manifest",
    "gallery_items",
    "gallery_embeddings",
    "gallery_index",
    "gallery_regions",
]


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    found, ws = build_targets(tmp_path_factory.mktemp("fuzz"))
    yield found
    ws.clean()


def _ops(allowed: tuple[int, ...]):
    """Mutation ops; for JSON inputs, half of the lists hold structural edits only."""
    any_op = st.tuples(
        st.integers(0, N_OP_KINDS - 1), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.binary(max_size=16)
    )
    lists = st.lists(any_op, min_size=1, max_size=4)
    structural = [allowed.index(k) for k in (10, 11, 12) if k in allowed]
    if structural:
        edit = st.tuples(st.sampled_from(structural), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1),
                         st.just(b""))  # fmt: skip
        lists = st.one_of(lists, st.lists(edit, min_size=1, max_size=3))
    return lists


def inputs(target):
    """Hypothesis strategy of inputs for one target: mutated seeds, random bytes behind a magic, generated docs."""
    seeds = target.seeds
    mutated = st.tuples(st.integers(0, len(seeds) - 1), _ops(target.ops)).map(
        lambda t: apply_ops(seeds[t[0]], t[1], target.ops, seeds)
    )
    options = [mutated]
    if target.random_prefixes:
        prefixed = st.tuples(st.sampled_from(target.random_prefixes), st.binary(max_size=2048))
        options.append(prefixed.map(lambda t: t[0] + t[1]))
    if target.generate:
        options.append(st.randoms(use_true_random=False).map(target.generate))
    return st.one_of(options)


def check(target, data: bytes) -> None:
    """The property: parsed, or refused with the target's duetgen error and a one-line message."""
    with memory_limit(MEMORY_CAP):
        outcome = classify(target, data, timeout=PER_EXAMPLE_S)
    if outcome.kind == "crash":
        raise AssertionError(f"{target.name}: {outcome.detail}; input {data[:200]!r}") from outcome.error


@pytest.mark.parametrize("name", PARSERS)
def test_mutated_and_random_inputs_parse_or_are_refused(targets, name):
    target = targets[name]
    n = max(8, int(BASE_EXAMPLES / target.cost))

    @settings(max_examples=n, **SETTINGS)
    @given(data=inputs(target))
    def fuzz(data):
        check(target, data)

    if name in GALLERY_REPROS:
        fuzz = example(data=GALLERY_REPROS[name])(fuzz)
    elif name == "world_groups":
        fuzz = example(data=WORLD_REPRO)(fuzz)
    for seed in target.seeds:  # every unmutated seed must parse
        assert classify(target, seed).kind == "parsed", (name, classify(target, seed).detail)
    fuzz()


def test_in_memory_arrays_and_tensors(targets):
    """Arrays of any small shape and dtype (NaN, inf, huge, negative values) through read_sketch and as tensors."""
    import torch

    from duetgen.sketch_input import read_sketch

    dtypes = st.sampled_from(["uint8", "uint16", "bool", "float16", "float32", "float64", "int32", "int64",
                              "complex64", "U3", "datetime64[s]"])  # fmt: skip
    arrays = hnp.arrays(dtype=dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=24))

    @settings(max_examples=max(20, BASE_EXAMPLES), **SETTINGS)
    @given(array=st.one_of(arrays, st.randoms(use_true_random=False).map(random_array)))
    def fuzz(array):
        sources = [array]  # hypothesis gives numpy scalars for shape (): read_sketch must refuse those cleanly too
        array = np.asarray(array)
        if array.dtype.kind in "biuf" and array.dtype != "uint16":
            sources.append(torch.from_numpy(array.copy()))
        for source in sources:
            try:
                with memory_limit(MEMORY_CAP):
                    read_sketch(source, size=16)
            except DuetgenInputError as err:
                assert "\n" not in str(err).strip()

    fuzz()


def test_fuzz_examples_are_reproducible():
    """The benchmark's inputs depend only on (seed, parser, i), so a crash index is a repro."""
    from fuzz_corpus import random_ops

    a, b = random.Random("0-svg-7"), random.Random("0-svg-7")
    assert random_ops(a, JSON_OPS) == random_ops(b, JSON_OPS)
