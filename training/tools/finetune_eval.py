"""Small 3DME-S0 / S10 check on MSD hippocampus: 20 training cases, 10 held-out cases (distinct subjects).

S0 trains the UNet head on the frozen encoder; S10 also fine-tunes the encoder (0.1x lr); both 10
epochs x 10 steps of batch 4, 32^3 crops at 1 mm. Prints mean Dice per label on the held-out cases.
This is a smoke-sized figure for docs/pretraining.md; the benchmark (issue 6) runs the real protocol.

    OMP_NUM_THREADS=1 nice -n 10 python training/tools/finetune_eval.py [--encoder encoder-v1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from medfoundcore.data.datasets import find_cases
from medfoundcore.data.paths import shared_data_dir
from medfoundcore.metrics import dice
from medfoundcore.train.finetune import FinetuneConfig, finetune, predict_segmentation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="encoder-v1")
    parser.add_argument("--out", default="/tmp/medfound-finetune-eval", help="model folders go here (must not exist)")
    args = parser.parse_args()
    refs = sorted(find_cases([shared_data_dir() / "msd_hippocampus"]), key=lambda r: r.case_id)
    train, test = refs[:20], refs[-10:]
    results = {}
    for name, freeze in (("S0 (frozen encoder)", True), ("S10 (encoder fine-tuned)", False)):
        config = FinetuneConfig(epochs=10, steps_per_epoch=10, batch_size=4, crop_size=32, spacing_mm=1.0, lr=1e-3, freeze_encoder=freeze, device="cpu")
        start = time.perf_counter()
        model_dir = finetune(train, config, args.encoder, output_dir=Path(args.out) / ("s0" if freeze else "s10"))
        seconds = time.perf_counter() - start
        scores = []
        for ref in test:
            case = ref.load()
            pred = predict_segmentation(model_dir, case.image, device="cpu").array
            scores.append([dice(pred == 1, case.labels.array == 1), dice(pred == 2, case.labels.array == 2), dice(pred > 0, case.labels.array > 0)])
        mean = np.mean(scores, axis=0)
        results[name] = {"train_seconds": round(seconds, 1), "dice_anterior": round(float(mean[0]), 3),
                         "dice_posterior": round(float(mean[1]), 3), "dice_whole": round(float(mean[2]), 3)}
        print(name, json.dumps(results[name]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
