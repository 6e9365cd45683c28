"""recipes/train_sbir.py: two-step runs of every task on a small real Sketchy subset, resume, --config."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import yaml
from conftest import REPO, SKETCHY
from safetensors.torch import load_file

import duetgen

pytestmark = pytest.mark.skipif(not SKETCHY.is_dir(), reason="sketchy128 sample not present")

TRAIN = ["ant", "ape", "apple", "armor"]
TEST = ["airplane", "alarm_clock"]


def _recipe():
    spec = importlib.util.spec_from_file_location("train_sbir", REPO / "recipes" / "train_sbir.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def recipe():
    return _recipe()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sbir")
    torch.manual_seed(0)
    enc = duetgen.ComposedQueryEncoder(duetgen.backbones.get_clip_config("duetgen-tiny"), backbone="duetgen-tiny")
    enc.save_pretrained(str(root / "tiny"))
    split = root / "split.json"
    split.write_text(json.dumps({"train": TRAIN, "test": TEST}))
    return root, root / "tiny", split


def _argv(setup, out, task, steps, *extra):
    _, model, split = setup
    return ["--task", task, "--dataset", "sketchy", "--root", str(SKETCHY), "--split", str(split), "--model",
            str(model), "--out", str(out), "--steps", str(steps), "--classes-per-batch", "2", "--per-class", "3",
            "--log-every", "1", "--eval-batch-size", "32", *extra]  # fmt: skip


def _log_steps(out):
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def _weights(folder):
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("task", ["pretrain", "category", "fine-grained", "duet"])
def test_two_step_run(recipe, setup, tmp_path, task):
    out = tmp_path / task
    summary = recipe.main(_argv(setup, out, task, 2, "--eval-every", "2"))
    assert summary["ran"] == 2 and _log_steps(out) == [0, 1]
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    expected_terms = {"pretrain": {"cls", "pair"},
                      "category": {"triplet", "cls"}, "fine-grained": {"triplet", "cls", "fdiv", "shuffle"},
                      "duet": {"trip", "comp", "reg", "tt", "rt"}}[task]  # fmt: skip
    assert expected_terms <= set(logs[0]) and all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
    ev = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in ev] == [2] and 0 <= ev[0]["mAP@all"] <= 1 and 0 <= ev[0]["Acc@1"] <= 1
    best = json.loads((out / "best.json").read_text())
    assert best["step"] == 2 and best["metric"] == ("mAP@all" if task in ("pretrain", "category") else "Acc@1")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["task"] == task and cfg["steps"] == 2 and cfg["split"].endswith("split.json")
    # the best and final encoders load; only the task's parameters moved
    assert duetgen.load_encoder(out / "best").config.backbone == "duetgen-tiny"
    init, final = _weights(setup[1]), _weights(out / "final")
    changed = {k for k in init if not torch.equal(init[k], final[k])}
    if task == "pretrain":  # the stand-in: towers, projections and the text side all train (no pretrained trunk)
        for part in ("clip.transformer.", "clip.visual.transformer.", "clip.token_embedding", "clip.logit_scale"):
            assert any(k.startswith(part) for k in changed), part
        return
    assert "visual_prompts" in changed and any("visual" in k and "ln_" in k for k in changed)
    if task == "duet":
        assert {"prompt_tokens"} <= changed and any(k.startswith("mapper") for k in changed)
        allowed = ("visual_prompts", "prompt_tokens", "mapper")
    else:
        allowed = ("visual_prompts",)
    assert all(k.startswith(allowed) or (k.startswith("clip.visual.") and "ln_" in k) for k in changed), changed


def test_resume_continues_at_the_saved_step(recipe, setup, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    recipe.main(_argv(setup, full, "fine-grained", 4, "--eval-every", "0"))
    first = recipe.main(_argv(setup, part, "fine-grained", 4, "--eval-every", "0", "--max-steps-this-run", "2"))
    assert first["ran"] == 2 and json.loads((part / "state" / "step.json").read_text()) == {"step": 2}
    assert not (part / "final").exists() and _log_steps(part) == [0, 1]
    second = recipe.main(_argv(setup, part, "fine-grained", 4, "--eval-every", "0", "--resume"))
    assert second["start"] == 2 and second["ran"] == 2
    assert _log_steps(part) == [0, 1, 2, 3]
    # state restored: the interrupted run ends exactly where an uninterrupted one does
    a, b = _weights(full / "final"), _weights(part / "final")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    full_log = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    part_log = [json.loads(x) for x in (part / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in full_log] == pytest.approx([r["loss"] for r in part_log], abs=1e-4)
    assert [r["lr"] for r in full_log] == [r["lr"] for r in part_log]  # scheduler restored too
    # a fresh run without --resume restarts from step 0 in a new folder
    again = recipe.main(_argv(setup, tmp_path / "fresh", "category", 1, "--eval-every", "0", "--resume"))
    assert again["start"] == 0


def test_config_yaml_supplies_defaults(recipe, setup, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"task": "fine-grained", "w-fdiv": 0.0, "w_shuffle": 0.0, "steps": 5, "lr": 0.01}))
    args = recipe.parse_args(["--config", str(cfg), "--root", "r", "--out", "o", "--steps", "1"])
    assert (args.task, args.w_fdiv, args.w_shuffle, args.steps, args.lr) == ("fine-grained", 0.0, 0.0, 1, 0.01)
    cfg.write_text(yaml.safe_dump({"no_such_option": 1}))
    with pytest.raises(SystemExit):
        recipe.parse_args(["--config", str(cfg), "--root", "r", "--out", "o"])
    with pytest.raises(SystemExit):
        recipe.parse_args(["--out", "o"])  # --root missing


def test_shipped_configs_parse(recipe):
    files = sorted((REPO / "recipes" / "configs").glob("sbir_*.yaml"))
    assert files
    for f in files:
        args = recipe.parse_args(["--config", str(f), "--out", "o"])
        assert args.task in ("pretrain", "category", "fine-grained", "duet") and args.root
