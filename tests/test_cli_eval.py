"""``duetgen eval`` end to end on a tiny encoder and a small real Sketchy split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SKETCHY

import duetgen
from duetgen.cli import main

pytestmark = pytest.mark.skipif(not SKETCHY.is_dir(), reason="sketchy128 sample not present")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    enc = duetgen.ComposedQueryEncoder(duetgen.backbones.get_clip_config("duetgen-tiny"), backbone="duetgen-tiny")
    enc.save_pretrained(str(root / "tiny"))
    split = root / "split.json"
    split.write_text(json.dumps({"train": ["ant", "ape"], "test": ["airplane", "alarm_clock", "apple"]}))
    return root, root / "tiny", split


def _args(model, split, *extra):
    return [
        "eval",
        "--model",
        str(model),
        "--dataset",
        "sketchy",
        "--root",
        str(SKETCHY),
        "--split",
        str(split),
        *extra,
    ]


def test_eval_prints_table_and_writes_json(setup, capsys):
    root, model, split = setup
    out = root / "res.json"
    assert main(_args(model, split, "--classes", "test", "--json", str(out))) == 0
    text = capsys.readouterr().out
    assert "| model | mAP@all | mAP@200 | P@100 | P@200 | Acc@1 | Acc@5 | Acc@10 |" in text and "| chance |" in text
    res = json.loads(out.read_text())
    assert res["num_classes"] == 3 and res["num_sketches"] == 75 and res["num_photos"] == 75
    m = res["metrics"]
    assert set(m) == {"mAP@all", "mAP@200", "P@100", "P@200", "Acc@1", "Acc@5", "Acc@10"}
    assert m["P@100"] is None and m["P@200"] is None and m["mAP@200"] is None  # gallery of 75 photos < K
    assert 0 < m["mAP@all"] <= 1 and 0 <= m["Acc@1"] <= m["Acc@5"] <= m["Acc@10"] <= 1

    # the numbers agree with an independent computation (scikit-learn AP, explicit within-class ranks)
    from sklearn.metrics import average_precision_score

    from duetgen.zs_sbir import ImageTransforms, open_sbir_dataset

    enc = duetgen.load_encoder(model)
    ds = open_sbir_dataset("sketchy", SKETCHY, str(split), "test")
    tf = ImageTransforms(enc.image_size, "ink")
    with torch.no_grad():
        s = enc.encode_image(torch.stack([tf.sketch(p) for p in ds.sketches]))
        p = enc.encode_image(torch.stack([tf.photo(x) for x in ds.photos]))
    sim = (s @ p.T).numpy()
    ap = [average_precision_score(ds.photo_labels == ds.sketch_labels[i], sim[i]) for i in range(len(sim))]
    assert m["mAP@all"] == pytest.approx(np.mean(ap), abs=1e-3)
    acc1 = np.mean(
        [sim[i, ds.sketch_photo[i]] >= sim[i, ds.photo_labels == ds.sketch_labels[i]].max() for i in range(len(sim))]
    )
    assert m["Acc@1"] == pytest.approx(acc1, abs=1e-6)


def test_eval_task_selects_metrics_and_json_stdout(setup, capsys):
    _, model, split = setup
    assert main(_args(model, split, "--task", "fine-grained", "--json", "-")) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["metrics"]) == {"Acc@1", "Acc@5", "Acc@10"} and res["task"] == "fine-grained"
    assert res["chance"]["Acc@1"] == pytest.approx(1 / 25, abs=0.02)
    assert main(_args(model, split, "--task", "category", "--classes", "train", "--json", "-")) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["metrics"]) == {"mAP@all", "mAP@200", "P@100", "P@200"} and res["num_classes"] == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "/no/such/model"], "neither a folder nor a known backbone"),
        (["--root", "/no/such/root"], "is not a folder"),
        (["--split", "/no/such/split.json"], "class split"),
        (["--json", "/no/such/dir/out.json"], "does not exist"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_eval_errors_are_one_line(setup, capsys, argv, message):
    _, model, split = setup
    base = {"--model": str(model), "--root": str(SKETCHY), "--split": str(split)}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    args = ["eval", "--dataset", "sketchy"] + [x for kv in base.items() for x in kv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("duetgen: error:") and message in err and "\n" not in err
