"""The ``medfound`` command line: subcommands are discovered from :mod:`medfoundcore.commands`.

Each module there defines ``register(subparsers)``; its handler returns an exit code. Every
:class:`~medfoundcore.errors.MedFoundError` becomes one ``medfound: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from . import __version__, commands
from .errors import Cancelled, MedFoundError

EXIT_ERROR = 2
EXIT_CANCELLED = 130


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per module in :mod:`medfoundcore.commands`."""
    parser = argparse.ArgumentParser(
        prog="medfound",
        description="MedFound: text-prompted and zero-shot segmentation of 3D CT/MRI volumes.",
    )
    parser.add_argument("--version", action="version", version=f"medfound {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medfound`` with ``argv``; returns the exit code (also used by the console script)."""
    try:
        parser = build_parser()  # imports every command: Ctrl-C may land here
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_ERROR
        return int(args.func(args) or 0)
    except Cancelled:
        print("medfound: cancelled; no output was written", file=sys.stderr)
        return EXIT_CANCELLED
    except MedFoundError as error:
        print(f"medfound: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("medfound: interrupted; no output was written", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
