"""``medfound pretrain DATA... --work-dir DIR``: self-supervised 3DME pretraining on unlabelled volumes.

Run it plainly for one CPU/GPU, or under ``torchrun --nproc_per_node N -m medfoundcore.cli pretrain ...``
for DDP on several GPUs/nodes (detected from the torchrun environment). A rerun with the same
``--work-dir`` resumes from the newest checkpoint unless ``--no-resume`` is given.
"""

from __future__ import annotations

import argparse
import json
import os

from ..device import DEVICE_CHOICES
from ..progress import cli_progress

OVERRIDES = ("encoder", "crop_size", "spacing_mm", "masking", "steps", "batch_size", "lr", "seed", "checkpoint_every", "eval_every", "holdout", "device", "num_workers")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pretrain", help="self-supervised pretraining of the 3D encoder (DDP via torchrun)", description=__doc__)
    parser.add_argument("data", nargs="+", metavar="DATA", help="folders or files of NIfTI/NRRD/MHA volumes or DICOM series (labels are skipped)")
    parser.add_argument("--work-dir", required=True, help="checkpoints, metrics.json and the exported encoder go here")
    parser.add_argument("--config", help="JSON or YAML file with PretrainConfig keys (training/ has examples)")
    parser.add_argument("--encoder", help="encoder preset: tiny (CPU) or paper (GPU)")
    parser.add_argument("--crop-size", type=int, dest="crop_size", help="crop side in voxels (paper: 128)")
    parser.add_argument("--spacing", type=float, dest="spacing_mm", help="isotropic resampling in mm (paper: 1)")
    parser.add_argument("--masking", choices=("progressive", "mim", "dual_axis"))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="per process")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--checkpoint-every", type=int, dest="checkpoint_every")
    parser.add_argument("--eval-every", type=int, dest="eval_every")
    parser.add_argument("--holdout", type=int, help="volumes held out for reconstruction PSNR")
    parser.add_argument("--num-workers", type=int, dest="num_workers", help="data-loading processes per rank")
    parser.add_argument("--device", choices=DEVICE_CHOICES)
    parser.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    parser.add_argument("--export-name", help="also install the encoder in the model store under this name")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace):  # -> PretrainConfig (import kept lazy for a fast CLI)
    """PretrainConfig from ``--config`` (or defaults) with the command-line overrides applied."""
    from ..train.pretrain import PretrainConfig

    overrides = {key: getattr(args, key) for key in OVERRIDES if getattr(args, key, None) is not None}
    if args.config:
        return PretrainConfig.load(args.config, **overrides)
    return PretrainConfig.from_dict(overrides)


def run(args: argparse.Namespace) -> int:
    from ..registry import ModelCard, import_model
    from ..train.pretrain import pretrain

    config = build_config(args)
    main = os.environ.get("RANK", "0") == "0"
    progress = cli_progress(disable=args.quiet or not main)
    try:
        encoder_dir = pretrain(args.data, config, args.work_dir, resume=not args.no_resume, progress=progress)
    finally:
        progress.close()
    if main:
        if args.export_name:
            card = ModelCard.read(encoder_dir / "card.json")
            print(f"installed {import_model(encoder_dir, args.export_name)} ({card.kind})")
        metrics = json.loads((encoder_dir.parent / "metrics.json").read_text())
        last = metrics["history"][-1] if metrics["history"] else {}
        psnr = metrics["psnr"][-1]["psnr_db"] if metrics["psnr"] else None
        print(f"encoder: {encoder_dir}  steps: {last.get('step')}  loss: {last.get('total', float('nan')):.4f}  held-out PSNR: {psnr if psnr is None else round(psnr, 2)} dB")
    return 0
