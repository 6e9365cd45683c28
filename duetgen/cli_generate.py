"""``duetgen generate``: sketch and/or words -> image(s) with a DuetGenPipeline (the embedded default or --model)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from . import limits
from .cli import command
from .errors import DuetgenInputError

SCHEDULERS = ("ddpm", "ddim", "dpm", "euler", "euler-ancestral")  # duetgen.pipelines.SCHEDULERS (not imported here:
# the pipelines pull in diffusers, and --help must stay fast)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sketch", help="sketch file (PNG, JPEG, SVG, QuickDraw ndjson, ...); omit for text-only")
    p.add_argument("--text", help='words about what the sketch cannot show, e.g. "red with stripes in pixel art"')
    p.add_argument(
        "--out", required=True, help="output image (.png/.jpg/.webp); several images: a grid here plus OUT-0.png, ..."
    )
    p.add_argument(
        "--steps", type=int, default=25, help="denoising steps (default 25; at most DUETGEN_MAX_STEPS, 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same image (default 0)")
    p.add_argument(
        "--num-images", type=int, default=1, help="how many images (default 1; at most DUETGEN_MAX_IMAGES, 64)"
    )
    p.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (default: the pipeline's)"
    )
    p.add_argument(
        "--sketch-guidance",
        type=float,
        default=None,
        help="a separate guidance weight for the sketch (higher: the pose and outline are followed more closely; "
        "three UNet passes per guided step instead of two). Default: sketch and words share --guidance",
    )
    p.add_argument(
        "--best-of",
        type=int,
        default=1,
        help="draw N candidates per image and keep the one that best answers the query: its embedding's cosine with "
        "the composed query plus its silhouette's overlap with the sketch (default 1; 4 costs 4x the time and "
        "follows the sketch's shape more often)",
    )
    p.add_argument(
        "--image",
        default=None,
        help="start from this picture instead of pure noise (image-to-image, SDEdit): its layout and pose survive, "
        "the words restyle it; pair it with its --sketch to pin the outline as well",
    )
    p.add_argument(
        "--strength",
        type=float,
        default=None,
        help="with --image, how much of it is redone, in (0, 1] (default 0.8): lower keeps more of the picture "
        "(0.6 keeps the shape but often the old style too), 1 keeps only a trace",
    )
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=None,
        help="sampler (default: the model's, DDPM); ddpm and euler-ancestral add noise each step, ddim, dpm and "
        "euler are deterministic given the seed",
    )
    p.add_argument("--model", default=None, help="pipeline folder (save_pretrained); default: the embedded model")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--unet-dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="dtype of the UNet alone; auto (the default): bfloat16 on CPUs with native bfloat16 (AVX512-BF16, AMX), "
        "where it is about 1.2x faster per image at the same fidelity, float32 elsewhere",
    )
    p.add_argument(
        "--jit",
        action="store_true",
        help="CPU: run the UNet as a frozen TorchScript trace (1.2x faster per image after about 1 s of tracing "
        "per batch shape, 2 s in all; pays off from about 12 images)",
    )


@command("generate", "generate images from a sketch, words, or both")(_generate_args)
def _generate(args: argparse.Namespace) -> int:
    import inspect

    import torch

    from .pipelines import load_pipeline

    if args.sketch is None and not args.text:
        raise DuetgenInputError("give --sketch, --text, or both")
    if args.steps < 1:
        raise DuetgenInputError(f"--steps must be >= 1, got {args.steps}")
    if args.num_images < 1:
        raise DuetgenInputError(f"--num-images must be >= 1, got {args.num_images}")
    if args.best_of < 1:
        raise DuetgenInputError(f"--best-of must be >= 1, got {args.best_of}")
    lim = limits.current()
    limits.check("max_steps", args.steps, "--steps", lim)
    limits.check("max_images", args.num_images, "--num-images", lim)
    limits.check("max_images", args.num_images * args.best_of, "--num-images x --best-of", lim)
    if args.text:
        limits.check("max_text_chars", len(args.text), "--text", lim)
    if args.guidance is not None and (not math.isfinite(args.guidance) or args.guidance < 0):
        raise DuetgenInputError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.sketch_guidance is not None and (not math.isfinite(args.sketch_guidance) or args.sketch_guidance < 0):
        raise DuetgenInputError(f"--sketch-guidance must be a finite number >= 0, got {args.sketch_guidance}")
    if args.strength is not None and args.image is None:
        raise DuetgenInputError("--strength goes with --image: pass the picture to start from")
    if args.strength is not None and not (math.isfinite(args.strength) and 0 < args.strength <= 1):
        raise DuetgenInputError(f"--strength must be in (0, 1], got {args.strength}")
    if args.image is not None and not Path(args.image).is_file():
        raise DuetgenInputError(f"--image '{args.image}' is not a file")
    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise DuetgenInputError(f"--out must end in one of {', '.join(IMAGE_SUFFIXES)}, got '{out}'")
    if args.sketch is not None and not Path(args.sketch).is_file():
        raise DuetgenInputError(f"--sketch '{args.sketch}' is not a file")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise DuetgenInputError(f"--device {args.device!r} is not a torch device ({err})") from err

    pipe = load_pipeline(args.model, device=device, unet_dtype=args.unet_dtype)
    if args.scheduler is not None:
        from .pipelines import make_scheduler

        pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    if args.jit:
        pipe.enable_unet_jit()
    kwargs = {}
    if args.guidance is not None:
        kwargs["guidance_scale"] = args.guidance
    else:
        kwargs["guidance_scale"] = inspect.signature(pipe.__call__).parameters["guidance_scale"].default
    if args.sketch_guidance is not None:
        kwargs["sketch_guidance_scale"] = args.sketch_guidance
    if args.image is not None:
        kwargs["image"] = args.image
        kwargs["strength"] = args.strength
    if args.best_of > 1:
        if "best_of" not in inspect.signature(pipe.__call__).parameters:
            raise DuetgenInputError(f"--best-of is not available with {type(pipe).__name__}; leave it at 1")
        kwargs["best_of"] = args.best_of
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    try:
        images = pipe(
            sketch=args.sketch,
            text=args.text or None,
            num_inference_steps=args.steps,
            num_images_per_prompt=args.num_images,
            generator=generator,
            output_type="pil",
            **kwargs,
        ).images
    except ValueError as err:
        if isinstance(err, DuetgenInputError):
            raise
        raise DuetgenInputError(str(err)) from err

    out.parent.mkdir(parents=True, exist_ok=True)
    if len(images) == 1:
        images[0].save(out)
        print(f"wrote {out}")
        return 0
    from diffusers.utils import make_image_grid

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    blank = images[0].copy()
    blank.paste((255, 255, 255), (0, 0, *blank.size))
    make_image_grid(images + [blank] * (rows * cols - len(images)), rows=rows, cols=cols).save(out)
    paths = []
    for i, image in enumerate(images):
        path = out.with_name(f"{out.stem}-{i}{out.suffix}")
        image.save(path)
        paths.append(path)
    print(f"wrote {out} (grid of {len(images)}) and {paths[0]} ... {paths[-1]}")
    return 0
