"""``medfound benchmark msd-hippocampus``: MedFound's methods vs MONAI baselines under one protocol.

Trains and evaluates every method on the same hashed cross-validation split with the same wall-clock
training budget, and writes results.json, results.md and dice_boxplot.png into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DATASETS = ("msd-hippocampus",)
METHOD_HELP = "medfound-text, 3dme-s0, 3dme-s10, 3dme-s0-random, unet, dynunet, unetr, swinunetr"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("benchmark", help="reproducible segmentation benchmark against MONAI baselines", description=__doc__)
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET")
    sub = datasets.add_parser(
        "msd-hippocampus",
        help="MSD Task04 Hippocampus, compared with the 3DME paper's Table I",
        description=__doc__,
    )
    sub.add_argument("--out", required=True, type=Path, help="output folder (an existing one must hold the same split)")
    sub.add_argument("--data", type=Path, default=None, help="MSD Hippocampus folder (default: <shared data>/msd_hippocampus)")
    sub.add_argument("--folds", type=int, default=5, help="number of cross-validation folds, split by case (default %(default)s)")
    sub.add_argument("--fold-limit", type=int, default=None, help="run only the first N folds (default: all)")
    sub.add_argument("--budget-minutes", type=float, default=10.0, help="training wall-clock budget per method and fold (default %(default)s)")
    sub.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    sub.add_argument("--methods", default="all", help=f"comma-separated subset of: {METHOD_HELP}; or all (default)")
    sub.add_argument("--size", default="auto", choices=("auto", "tiny", "small", "standard"),
                     help="model size profile; auto = standard (published configurations) on CUDA, tiny on CPU")
    sub.add_argument("--seed", type=int, default=0, help="seed of the split and of every method (default %(default)s)")
    sub.add_argument("--max-cases", type=int, default=None, help="use only the first N cases (smoke runs)")
    sub.add_argument("--no-reuse", action="store_true", help="re-run jobs even if a matching result is stored in --out")
    sub.set_defaults(func=run)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run(args: argparse.Namespace) -> int:
    from ..benchmark import BenchmarkConfig, run_benchmark
    from ..benchmark.methods import parse_methods
    from ..benchmark.report import MARKDOWN_NAME, gap_statement
    from ..progress import cli_progress

    config = BenchmarkConfig(
        out_dir=args.out,
        data_dir=args.data,
        folds=args.folds,
        fold_limit=args.fold_limit,
        budget_minutes=args.budget_minutes,
        device=args.device,
        methods=parse_methods(args.methods),
        seed=args.seed,
        size=args.size,
        max_cases=args.max_cases,
        reuse=not args.no_reuse,
    )
    bar = cli_progress()
    try:
        summary = run_benchmark(config, progress=bar)
    finally:
        bar.close()
    for method in summary["methods"].values():
        if method["status"] == "ok":
            overall = method["summary"]["overall"]
            print(f"{method['title']:<42} Dice {overall['dice']['mean']:.3f} ± {overall['dice']['sd']:.3f}   HD95 {overall['hd95']['mean']:.2f} mm")
        else:
            print(f"{method['title']:<42} {method['status']}")
    print(gap_statement(summary))
    print(f"report: {Path(args.out) / MARKDOWN_NAME}")
    return 0
