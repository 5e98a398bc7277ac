"""``medfound bench NAME``: run a benchmark from :mod:`medfoundcore.bench` and print its JSON report."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil

from .. import bench
from ..io import atomic_path


def _benchmarks() -> dict[str, object]:
    found = {}
    for info in pkgutil.iter_modules(bench.__path__):
        module = importlib.import_module(f"{bench.__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            found[module.NAME] = module
    return found


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="speed / memory benchmarks (prints JSON)", description=__doc__)
    names = parser.add_subparsers(dest="benchmark", metavar="NAME")
    for name, module in sorted(_benchmarks().items()):
        sub = names.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
        sub.add_argument("--json", dest="json_out", help="also write the report to this file")
        sub.set_defaults(func=run, bench_module=module)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run(args: argparse.Namespace) -> int:
    report = args.bench_module.run(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json_out:
        with atomic_path(args.json_out) as tmp:
            tmp.write_text(text)
    return 0
