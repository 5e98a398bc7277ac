"""Does an ``mri-v1``-family model depend on where a small image sits in its window? Scores fold 0's
held-out MSD hippocampus cases with the image padded on both sides (what ``segment`` does: MONAI's
sliding window) and padded at its end only (what the trainer did before ``preprocess.pad_randomly``).
The first ``mri-v1`` scored 0.836 / 0.823 vs 0.874 / 0.860; the one retrained with random placement
0.883 / 0.863 vs 0.888 / 0.864 (docs/mri.md, "The padding defect").

    python training/tools/padding_check.py --model mri-v1 [--cases 40]
    # the first mri-v1: git show 20c8ae4:MedFoundCore/src/medfoundcore/weights/mri-v1/{card.json,model.safetensors}
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hippocampus_fold import fold_split  # this folder's tool: the benchmark's fold
from medfoundcore.benchmark.cases import default_data_dir
from medfoundcore.inference.segment import _text_encoder
from medfoundcore.inference.segment_mri import MASK_THRESHOLD, load_mri_model, predict_probabilities
from medfoundcore.io import load_volume
from medfoundcore.metrics import dice
from medfoundcore.preprocess import encoder_input
from medfoundcore.vocabulary import load_vocabulary

PARTS = ("hippocampus_anterior", "hippocampus_posterior")  # label values 1, 2 of MSD Task04


def part_dice(net, card, text: torch.Tensor, image: np.ndarray, truth: np.ndarray, at_end: bool) -> list[float]:
    """Dice of both parts, argmax across the two prompts, the image padded to the window at its end or not."""
    window = card.preprocessing["window_zxy"]
    pads = [(0, max(0, w - s)) if at_end else (0, 0) for s, w in zip(image.shape, window)]
    prob, _ = predict_probabilities(net, np.ascontiguousarray(np.pad(image, pads)), text, PARTS, window, torch.device("cpu"))
    prob = prob[(slice(None), *(slice(0, s) for s in image.shape))]
    best, which = prob.max(dim=0)
    labels = torch.where(best >= MASK_THRESHOLD, which + 1, 0).numpy()
    return [dice(labels == value, truth == value) for value in (1, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mri-v1")
    parser.add_argument("--cases", type=int, default=40)
    args = parser.parse_args()
    net, card = load_mri_model(args.model, "cpu")
    vocab = load_vocabulary()
    text = _text_encoder().encode([vocab.get(k).name for k in PARTS]).float()
    data = default_data_dir()
    scores: dict[bool, list[list[float]]] = {False: [], True: []}
    for case in fold_split(0).test[: args.cases]:
        image, truth, _ = encoder_input(load_volume(data / f"{case}_img.nii.gz"), load_volume(data / f"{case}_lab.nii.gz"), "MRI", (1, 1, 1))
        for at_end in scores:
            scores[at_end].append(part_dice(net, card, text, image, truth, at_end))
    for at_end, rows in scores.items():
        print("padded at the end" if at_end else "padded on both sides (segment)", np.round(np.mean(rows, axis=0), 3).tolist())


if __name__ == "__main__":
    main()
