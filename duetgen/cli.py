"""The ``duetgen`` command line: a thin map from subcommands to public functions.

A user error (bad file, bad argument, missing weights) prints one line ``duetgen: error: ...`` and exits 2; no
traceback. ``DUETGEN_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

from .errors import DuetgenError
from .version import __version__

_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str):
    """Registers ``add_args(parser)`` under ``name``; the decorated function runs it."""

    def wrap(add_args):
        def deco(run):
            _COMMANDS[name] = (help, add_args, run)
            return run

        return deco

    return wrap


# ---------------------------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------------------------


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


@command("info", "show backbones, device and whether the embedded default model is present")(_info_args)
def _info(args: argparse.Namespace) -> int:
    import torch

    from .backbones import get_backbone, list_backbones
    from .embedded import embedded_status

    info = {
        "version": __version__,
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "embedded": embedded_status(),
        "backbones": {n: get_backbone(n).description for n in list_backbones()},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"duetgen {info['version']}  (torch {info['torch']}, device {info['device']}, {info['threads']} threads)")
    for part, state in info["embedded"].items():
        print(f"embedded {part:9s}: {state}")
    print("backbones:")
    for n, d in info["backbones"].items():
        print(f"  {n:18s} {d}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# world
# ---------------------------------------------------------------------------------------------------------------


def _world_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (photos/, sketches/, scenes/, manifest.jsonl)")
    p.add_argument("-n", type=int, default=16, help="number of (photo, sketch) samples (default 16)")
    p.add_argument("--seed", type=int, default=0, help="world seed: the same seed writes the same pixels")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--scenes", type=int, default=0, help="also write this many multi-object scenes")


@command("world", "write samples of the procedural world (photos, sketches, captions) to look at")(_world_args)
def _world(args: argparse.Namespace) -> int:
    from .world import write_world

    if args.n < 0 or args.scenes < 0:
        raise DuetgenError(f"-n and --scenes must be >= 0, got {args.n} and {args.scenes}")
    out = write_world(args.out, args.n, seed=args.seed, size=args.size, scenes=args.scenes)
    print(f"wrote {args.n} samples and {args.scenes} scenes to {out}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------


def _load_plugins() -> None:
    """Subcommands defined beside their feature (generation, retrieval, evaluation, studio)."""
    import importlib

    for mod in ("duetgen.cli_generate", "duetgen.cli_retrieve", "duetgen.cli_eval", "duetgen.cli_studio"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = argparse.ArgumentParser(
        prog="duetgen",
        description="Sketch + words through CLIP: retrieve, find scenes, transfer attributes and generate images.",
        epilog="Run 'duetgen COMMAND --help' for a command's options. Everything works offline on the embedded "
        "default model.",
    )
    parser.add_argument("--version", action="version", version=f"duetgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (DuetgenError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        if os.environ.get("DUETGEN_DEBUG"):
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"duetgen: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("duetgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover - run through the package module so plugins register once
    from duetgen.cli import main as _main

    sys.exit(_main())
