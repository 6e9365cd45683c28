"""Best-of-N generation: which score picks the best of N samples? (the choice behind ``pipe(best_of=N)``)

Generates ``--samples`` images for each of ``--n`` held-out fidelity requests (``bench_generation_fidelity.py``'s
requests and seeds; cached in ``--cache``), then, for best-of-2, -4 and -``samples``, keeps one image per request by
each score and reports what the independent evaluator reads on the kept images:

* ``random``: no choice (the first-sample baseline, in expectation);
* ``cos_q``: cosine of the image embedding with the composed query;
* ``cos_t``: cosine with the words-only text embedding;
* ``iou``: IoU of the sketch's region and the image's silhouette;
* sums of these with IoU weights 0.1, 0.3 and 1 (``cos_q + 0.1 iou`` is :func:`duetgen.verify.score_generations`).

    OMP_NUM_THREADS=2 python benchmarks/bench_best_of.py --n 64 --samples 8      # about 5 minutes of generation
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import bench_generation_fidelity as fidelity  # noqa: E402

from duetgen.errors import run_script  # noqa: E402
from duetgen.evaluator import load_evaluator, mask_iou  # noqa: E402
from duetgen.transfer import photo_silhouette  # noqa: E402
from duetgen.verify import sketch_regions  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=64, help="held-out requests")
    p.add_argument("--samples", type=int, default=8, help="samples per request (the largest N)")
    p.add_argument("--cache", default="runs/best_of", help="folder for the generated samples (reused if present)")
    args = p.parse_args(argv)
    n, k = args.n, args.samples
    reqs = fidelity.requests(n)
    cache = Path(args.cache) / f"samples_{n}x{k}.npz"
    if cache.is_file():
        images = np.load(cache)["images"]
    else:
        images = fidelity.generate(fidelity.parse_args(["--n", str(n), "--samples", str(k)]), reqs)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, images=images)
    from duetgen.pipelines import load_pipeline

    encoder = load_pipeline(None).encoder
    sketches = torch.from_numpy(np.stack([r["sketch"] for r in reqs])).float().div(255)[:, None]
    sketches = sketches.expand(-1, 3, -1, -1).contiguous()
    words = [r["words"] for r in reqs]
    flat = images.reshape(n * k, *images.shape[2:])
    with torch.no_grad():
        q, t = encoder.encode_query(sketches, words).float(), encoder.encode_text(words).float()
        emb = encoder.encode_image(torch.from_numpy(flat).permute(0, 3, 1, 2).float()).float().view(n, k, -1)
    cos_q = torch.einsum("nd,nkd->nk", q, emb).numpy()
    cos_t = torch.einsum("nd,nkd->nk", t, emb).numpy()
    regions = sketch_regions(sketches)
    iou = np.array([[mask_iou(regions[i], photo_silhouette(Image.fromarray((images[i, j] * 255).astype(np.uint8)),
                                                           work=regions.shape[-1])) for j in range(k)]
                    for i in range(n)])  # fmt: skip
    scores = load_evaluator(None).score(flat, [{"instance": r["instance"], "attrs": r["attrs"]}
                                               for r in reqs for _ in range(k)])  # fmt: skip

    def kept(score: np.ndarray, m: int) -> dict:
        rows = np.arange(n) * k + score[:, :m].argmax(1)
        out = {h: float(np.nanmean(scores[f"{h}_ok"][rows])) for h in ("shape", "colour", "pattern", "domain")}
        out["iou"] = float(np.nanmean(scores["iou"][rows]))
        return out

    rng = np.random.default_rng(0)
    rules = {"random": lambda: rng.random((n, k)), "cos_q": lambda: cos_q, "cos_t": lambda: cos_t, "iou": lambda: iou}
    for w in (0.1, 0.3, 1.0):
        rules[f"cos_q + {w} iou"] = lambda w=w: cos_q + w * iou
        rules[f"cos_t + {w} iou"] = lambda w=w: cos_t + w * iou
    every = {h: float(np.nanmean(scores[f"{h}_ok"])) for h in ("shape", "colour", "pattern", "domain")}
    results = {"all samples": {**every, "iou": float(np.nanmean(scores["iou"]))}}
    print(f"\n{n} held-out requests, {k} samples each; the evaluator on the kept image\n")
    print("| keep by | best of | shape | colour | pattern | domain | IoU |\n|---|---|---|---|---|---|---|")
    r = results["all samples"]
    print(f"| (every sample) | 1 | {r['shape']:.3f} | {r['colour']:.3f} | {r['pattern']:.3f} | {r['domain']:.3f} | "
          f"{r['iou']:.3f} |")  # fmt: skip
    for m in sorted({2, 4, k}):
        for name, rule in rules.items():
            r = results[f"{name} / {m}"] = kept(rule(), m)
            print(f"| {name} | {m} | {r['shape']:.3f} | {r['colour']:.3f} | {r['pattern']:.3f} | {r['domain']:.3f} | "
                  f"{r['iou']:.3f} |")  # fmt: skip
    return results


if __name__ == "__main__":
    run_script(main, "bench_best_of")
