"""Print the MSD hippocampus cases of one fold of ``medfound benchmark msd-hippocampus`` (same seed,
same fold count): what the benchmark scores every method on, held out of ``mri-v1`` so that its
hippocampus figures are on the same unseen cases.

    python training/tools/hippocampus_fold.py --fold 0 [--part test|train]
"""

from __future__ import annotations

import argparse

from medfoundcore.benchmark.cases import default_data_dir, discover_cases, hash_cases
from medfoundcore.benchmark.protocol import make_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--part", choices=("test", "train"), default="test")
    args = parser.parse_args()
    data = default_data_dir()
    ids = discover_cases(data)
    manifest = make_manifest("msd-hippocampus", hash_cases(data, ids), args.folds, args.seed)
    fold = manifest.fold(args.fold)
    print(" ".join(fold.test if args.part == "test" else fold.train))


if __name__ == "__main__":
    main()
