"""Print the MSD hippocampus cases of one fold of ``medfound benchmark msd-hippocampus`` (same seed,
same fold count): what the benchmark scores every method on, held out of ``mri-v1`` so that its
hippocampus figures are on the same unseen cases.

    python training/tools/hippocampus_fold.py --fold 0 [--part test|train]
"""

from __future__ import annotations

import argparse

from medfoundcore.benchmark.cases import default_data_dir, discover_cases, hash_cases
from medfoundcore.benchmark.protocol import make_manifest


def fold_split(fold: int = 0, folds: int = 5, seed: int = 0):
    """The benchmark's split of the MSD hippocampus cases for one fold (``.train`` / ``.test`` case ids)."""
    data = default_data_dir()
    return make_manifest("msd-hippocampus", hash_cases(data, discover_cases(data)), folds, seed).fold(fold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--part", choices=("test", "train"), default="test")
    args = parser.parse_args()
    fold = fold_split(args.fold, args.folds, args.seed)
    print(" ".join(fold.test if args.part == "test" else fold.train))


if __name__ == "__main__":
    main()
