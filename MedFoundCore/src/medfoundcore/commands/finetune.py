"""``medfound finetune DATA... --out-name NAME``: train a 3D head on the pretrained encoder.

DATA are labelled cases in the same layouts as ``medfound train-seg`` (nnU-Net/MSD folders with
dataset.json, or ``*_img.nii.gz`` + ``*_lab.nii.gz`` pairs). Segmentation trains a 3D UNet decoder;
classification an attention-pooling head (target: each case's modality, or ``--class-from meta:KEY``).
The model is installed in the local model store as NAME (kind ``finetuned3d``).
"""

from __future__ import annotations

import argparse

from ..device import DEVICE_CHOICES
from ..progress import cli_progress

OVERRIDES = ("task", "epochs", "steps_per_epoch", "lr", "batch_size", "crop_size", "spacing_mm", "device", "seed", "class_from")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("finetune", help="fine-tune a segmentation/classification head on the 3D encoder", description=__doc__)
    parser.add_argument("data", nargs="+", metavar="DATA", help="labelled case folders or *_img.nii.gz files")
    parser.add_argument("--out-name", required=True, help="name of the new model in the store")
    parser.add_argument("--encoder", default="encoder-v1", help="pretrained encoder (name or folder)")
    parser.add_argument("--config", help="JSON/YAML file with FinetuneConfig keys (see training/configs)")
    parser.add_argument("--task", choices=("segmentation", "classification"))
    encoder = parser.add_mutually_exclusive_group()
    encoder.add_argument("--freeze-encoder", dest="freeze_encoder", action="store_true", default=None, help="train the head only (3DME-S0)")
    encoder.add_argument("--train-encoder", dest="freeze_encoder", action="store_false", help="fine-tune the encoder too (3DME-S10)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--steps-per-epoch", type=int, dest="steps_per_epoch")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int, dest="batch_size")
    parser.add_argument("--crop-size", type=int, dest="crop_size")
    parser.add_argument("--spacing", type=float, dest="spacing_mm", help="isotropic mm (default: the encoder's)")
    parser.add_argument("--class-from", dest="class_from", help="classification target: modality or meta:KEY")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", choices=DEVICE_CHOICES)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import find_cases
    from ..train.finetune import FinetuneConfig, finetune
    from ..train.pretrain import read_config_file

    data = read_config_file(args.config).get("finetune", {}) if args.config else {}
    data.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None})
    if args.freeze_encoder is not None:
        data["freeze_encoder"] = args.freeze_encoder
    config = FinetuneConfig.from_dict(data)
    refs = find_cases(args.data)
    progress = cli_progress(disable=args.quiet)
    try:
        directory = finetune(refs, config, args.encoder, args.out_name, progress=progress)
    finally:
        progress.close()
    print(f"installed {args.out_name}: {directory}")
    return 0
