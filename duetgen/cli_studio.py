"""``duetgen studio``: start the Streamlit studio (``apps/studio.py`` of the source checkout) in the browser.

::

    duetgen studio                                    # embedded default model + the shipped sample gallery
    duetgen studio --port 8600 --model runs/pipe --gallery photos.gallery --allow-dir ~/sketches

The studio lives outside the package, in ``apps/`` next to it, so it needs a source checkout installed with
``pip install -e .[studio]``. Flags reach the app as ``DUETGEN_STUDIO_*`` environment variables (documented in
``apps/studio_core.py``). Paths typed into the studio must lie inside the ``--allow-dir`` folders (default: the
repository's ``samples/`` and the current directory; the ``--model`` and ``--gallery`` folders are always allowed),
and so must every symlink inside a typed folder. Uploads are refused over ``--max-upload-mb`` (default 10 MB).
``docs/limits.md`` lists every limit.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

from .cli import command
from .errors import DuetgenError, DuetgenInputError

APP_RELATIVE = Path("apps") / "studio.py"
MAX_UPLOAD_MB = 10
"""Default upload limit of the studio in MB (``--max-upload-mb`` / ``DUETGEN_STUDIO_MAX_UPLOAD_MB``)."""
MAX_UPLOAD_MB_CEILING = 1024


def find_app() -> Path:
    """``apps/studio.py`` beside the package's parent folder (a source checkout / editable install).

    Raises:
        DuetgenError: the app is not there (a wheel install ships the library only).
    """
    root = Path(__file__).resolve().parent.parent
    app = root / APP_RELATIVE
    if not app.is_file():
        raise DuetgenError(
            f"the studio app is not in this install (looked for {app}); run from a source checkout installed with "
            "'pip install -e .[studio]'"
        )
    return app


def _studio_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--model", default=None, metavar="DIR", help="pipeline or encoder folder (default: embedded)")
    p.add_argument("--gallery", default=None, metavar="DIR", help="gallery built with 'duetgen index' "
                   "(default: the shipped sample gallery)")  # fmt: skip
    p.add_argument("--scene-gallery", default=None, metavar="DIR", help="gallery built with 'duetgen index "
                   "--regions' for scene retrieval (default: procedural demo scenes built on first use)")  # fmt: skip
    p.add_argument("--allow-dir", action="append", default=None, metavar="DIR",
                   help="a folder paths typed into the studio may point into (repeatable; default: the repository's "
                   "samples/ and the current directory)")  # fmt: skip
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="where demo scenes are built "
                   "(default ~/.cache/duetgen/studio)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=int, default=None, metavar="MB",
                   help=f"largest file the studio accepts (default {MAX_UPLOAD_MB}, or "
                   "DUETGEN_STUDIO_MAX_UPLOAD_MB)")  # fmt: skip
    p.add_argument("--headless", action="store_true", help="do not open a browser window")
    p.add_argument("--dry-run", action="store_true", help="print the streamlit command and exit")


def studio_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``streamlit run`` command line and the environment for it."""
    if not 1 <= args.port <= 65535:
        raise DuetgenInputError(f"--port must be from 1 to 65535, got {args.port}")
    env = dict(os.environ)
    for flag, var, value in (
        ("--model", "DUETGEN_STUDIO_MODEL", args.model),
        ("--gallery", "DUETGEN_STUDIO_GALLERY", args.gallery),
        ("--scene-gallery", "DUETGEN_STUDIO_SCENE_GALLERY", args.scene_gallery),
    ):
        if value is None:
            continue
        path = Path(os.path.expanduser(value)).resolve()
        if not path.is_dir():
            raise DuetgenInputError(f"{flag} '{value}' is not a folder")
        env[var] = str(path)
    if args.allow_dir:
        dirs = []
        for d in args.allow_dir:
            path = Path(os.path.expanduser(d)).resolve()
            if not path.is_dir():
                raise DuetgenInputError(f"--allow-dir '{d}' is not a folder")
            dirs.append(str(path))
        env["DUETGEN_STUDIO_ALLOW_DIRS"] = os.pathsep.join(dirs)
    if args.cache_dir:
        env["DUETGEN_STUDIO_CACHE"] = str(Path(os.path.expanduser(args.cache_dir)).resolve())
    max_mb = args.max_upload_mb
    if max_mb is None:
        raw = env.get("DUETGEN_STUDIO_MAX_UPLOAD_MB", "").strip()
        try:
            max_mb = int(raw) if raw else MAX_UPLOAD_MB
        except ValueError:
            raise DuetgenInputError(f"DUETGEN_STUDIO_MAX_UPLOAD_MB={raw!r} is not a whole number of MB") from None
    if not 1 <= max_mb <= MAX_UPLOAD_MB_CEILING:
        raise DuetgenInputError(f"--max-upload-mb must be from 1 to {MAX_UPLOAD_MB_CEILING}, got {max_mb}")
    env["DUETGEN_STUDIO_MAX_UPLOAD_MB"] = str(max_mb)
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(find_app()),
        "--server.port", str(args.port),
        "--server.address", args.address,
        "--server.headless", "true" if args.headless else "false",
        "--server.maxUploadSize", str(max_mb),
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        "--theme.primaryColor", "#3b5bdb",
    ]  # fmt: skip
    return cmd, env


@command("studio", "open the Streamlit studio in the browser: draw, retrieve, generate, find scenes")(_studio_args)
def _studio(args: argparse.Namespace) -> int:
    cmd, env = studio_command(args)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    if importlib.util.find_spec("streamlit") is None or importlib.util.find_spec("streamlit_drawable_canvas") is None:
        raise DuetgenError("the studio needs streamlit and streamlit-drawable-canvas: pip install -e .[studio]")
    print(f"duetgen studio on http://{args.address}:{args.port}  (Ctrl+C to stop)", flush=True)
    return subprocess.call(cmd, env=env)
