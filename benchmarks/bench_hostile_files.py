#!/usr/bin/env python
"""Hostile files, each in a fresh process: wall time and peak memory of refusing it, against a bare import.

The cases are those of ``tests/hostile_cases.py`` (XXE and billion-laughs SVG, PNG/JPEG decompression bombs, a GIF
of 5,000 frames, a zip-bomb and a malicious-pickle ``.npz``, deeply nested SVG and JSON, ``duetgen index`` on a
folder of symlink loops, checkpoint folders with pickles, unexpected config keys or configs far larger than their
weights). The parent writes each case's files (not timed), then runs a child process that

1. imports what the case needs and records its peak RSS so far (``VmHWM`` from ``/proc/self/status``),
2. runs the case (timed) under an address-space cap of what it has plus ``--cap-mb``,
3. records its peak RSS again and prints the outcome as JSON.

A baseline child only imports ``duetgen``. The table shows, per case: the outcome (the error type and its one-line
message, or what the reader returned), the time of the read, the whole child's wall time, the child's peak RSS,
and the growth of the peak over the same child right after its imports (the cost of the hostile file itself).

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_hostile_files.py --out runs/hostile
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def child(args) -> int:
    """Runs one case (or the baseline) in this fresh process and prints one JSON line."""
    t_start = time.perf_counter()
    if args.child == "baseline":
        import duetgen  # noqa: F401

        print(json.dumps({"case": "baseline", "imports_mb": _status_kb("VmHWM") / 1024,
                          "peak_mb": _status_kb("VmHWM") / 1024, "seconds": 0.0,
                          "process_s": time.perf_counter() - t_start, "outcome": "imported duetgen"}))  # fmt: skip
        return 0
    from hostile_cases import BY_NAME, PWNED

    case = BY_NAME[args.child]
    for module in case.imports:
        importlib.import_module(module)
    imports_mb = _status_kb("VmHWM") / 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_status_kb("VmSize") * 1024 + args.cap_mb * 2**20, hard))
    t0 = time.perf_counter()
    try:
        result = case.run(Path(args.dir))
        kind = "completed"
        message = result if isinstance(result, str) else f"returned {type(result).__name__}"
        if hasattr(result, "size") and not isinstance(result, str):
            message += f" {getattr(result, 'size', '')}"
    except BaseException as err:  # noqa: BLE001 - recorded, judged by the parent
        kind = type(err).__name__
        message = str(err)
    seconds = time.perf_counter() - t0
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    ok = (case.expect is None and kind == "completed") or (case.expect is not None and kind == case.expect.__name__)
    ok = ok and all(re.search(p, message) for p in case.match) and "\n" not in message.strip()
    ok = ok and not PWNED.exists()
    print(json.dumps({
        "case": case.name, "what": case.what, "outcome": kind, "message": message, "seconds": seconds,
        "imports_mb": imports_mb, "peak_mb": _status_kb("VmHWM") / 1024, "process_s": time.perf_counter() - t_start,
        "ok": bool(ok), "bound_s": case.seconds, "bound_extra_mb": case.extra_mb,
        "pickle_ran": PWNED.exists(),
    }))  # fmt: skip
    return 0


def run_child(name: str, folder: Path, cap_mb: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--dir", str(folder), "--cap-mb", str(cap_mb)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        nan = float("nan")
        return {"case": name, "outcome": "timeout", "message": f"over {timeout} s", "ok": False,
                "process_s": timeout, "seconds": timeout, "peak_mb": nan, "imports_mb": nan}  # fmt: skip
    wall = time.perf_counter() - t0
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"case": name, "outcome": f"child died (rc {proc.returncode})", "message": proc.stderr[-500:],
                "ok": False, "process_s": wall, "seconds": float("nan"), "peak_mb": float("nan"),
                "imports_mb": float("nan")}  # fmt: skip
    rec = json.loads(lines[-1])
    rec["wall_s"] = wall
    return rec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/hostile", help="folder for hostile_files.json")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--cap-mb", type=int, default=4096, help="address space a case may add before MemoryError")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds a child may run")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from hostile_cases import CASES, PWNED

    names = args.cases.split(",") if args.cases else [c.name for c in CASES]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = run_child("baseline", out, args.cap_mb, args.timeout)
    print(f"baseline (import duetgen): peak RSS {base['peak_mb']:.0f} MB, {base['process_s']:.2f} s", flush=True)
    results = []
    for case in (c for c in CASES if c.name in names):
        PWNED.unlink(missing_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"hostile-{case.name}-"))
        try:
            case.make(folder)
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
            rec = run_child(case.name, folder, args.cap_mb, args.timeout)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        rec["input_bytes"] = size
        rec["growth_mb"] = rec["peak_mb"] - rec["imports_mb"]
        results.append(rec)
        print(f"{case.name}: {rec['outcome']} in {rec['seconds'] * 1000:.1f} ms, peak {rec['peak_mb']:.0f} MB "
              f"(+{rec['growth_mb']:.1f} MB over imports) {'ok' if rec['ok'] else 'NOT OK'}: {rec['message'][:150]}",
              flush=True)  # fmt: skip
    print()
    print(f"Baseline child (`import duetgen` only): peak RSS {base['peak_mb']:.0f} MB.")
    print()
    print(
        "| case | input | outcome | read time ms | child wall s | peak RSS MB | after imports MB | growth MB | ok "
        "| message |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        msg = r["message"].replace("|", "\\|").replace("\n", " ")
        msg = re.sub(r"'/tmp/[^']*/", "'.../", msg)
        print(f"| {r['case']} | {r['input_bytes']:,} B | {r['outcome']} | {r['seconds'] * 1000:.1f} | "
              f"{r.get('wall_s', r['process_s']):.2f} | {r['peak_mb']:.0f} | {r['imports_mb']:.0f} | "
              f"{r['growth_mb']:.1f} | {'yes' if r['ok'] else 'NO'} | {msg[:220]} |")  # fmt: skip
    report = {"baseline": base, "cases": results, "python": sys.version.split()[0], "cap_mb": args.cap_mb}
    (out / "hostile_files.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'hostile_files.json'}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
