"""Error classes. Every user-facing failure in duetgen is one of these, with a one-line message that
names the problem and the fix."""

from __future__ import annotations


class DuetgenError(Exception):
    """Base class of every error duetgen raises on purpose."""


class DuetgenInputError(DuetgenError, ValueError):
    """A user-supplied input (file, argument, dataset folder) is unusable.

    The message names the input (path or argument) and what is wrong with it.
    """


class WeightsUnavailableError(DuetgenError, OSError):
    """Pretrained weights are not on this machine and cannot (or may not) be downloaded."""


class CheckpointError(DuetgenError, ValueError):
    """A checkpoint folder is missing, malformed, of the wrong kind, or unsafe to load."""


def run_script(main, prog: str) -> None:
    """Runs a recipe's or benchmark's ``main()``.

    A :class:`DuetgenError` (bad model folder, missing weights, bad input) ends it with one line
    ``PROG: error: ...`` on stderr and exit status 2, as argparse does, instead of a traceback.
    """
    import sys

    try:
        main()
    except DuetgenError as err:
        print(f"{prog}: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        sys.exit(2)
