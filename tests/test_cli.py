import json
import subprocess
import sys

import pytest

from duetgen import __version__


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "duetgen", *args], capture_output=True, text=True, timeout=timeout)


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"duetgen {__version__}"
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("info", "world"):
        assert cmd in r.stdout


def test_info_json_lists_backbones_and_embedded_state():
    r = run_cli("info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert "duetgen-tiny" in info["backbones"] and info["device"] in ("cpu", "cuda")
    assert set(info["embedded"]) == {"encoder", "generator"}
    r = run_cli("info")
    assert "embedded encoder" in r.stdout and "ViT-B-16-openai" in r.stdout


def test_world_writes_samples(tmp_path):
    r = run_cli("world", "--out", str(tmp_path / "w"), "-n", "3", "--size", "64", "--scenes", "1")
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "w" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) >= 3
    rec = json.loads(lines[0])
    assert (tmp_path / "w" / rec["photo"]).is_file() and (tmp_path / "w" / rec["sketch"]).is_file()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["world", "--out", "x", "-n", "-1"], "must be >= 0"),
        (["info", "--bogus"], "unrecognized arguments"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
