"""``medfound train-seg DATA... --out-name NAME``: train or fine-tune a text-prompted segmenter.

DATA are nnU-Net/MSD dataset folders (with dataset.json), folders of ``*_img/*_lab/*_labels.json``
cases, or single ``*_img.nii.gz`` files. Checkpoints go to ``--work-dir``; ``--resume`` continues an
interrupted run from its newest checkpoint. Launch with ``torchrun --nproc-per-node N -m
medfoundcore.cli train-seg ...`` for DDP.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..device import DEVICE_CHOICES
from ..errors import InputError
from ..progress import cli_progress, json_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..train.segment import TrainConfig

    d = TrainConfig()
    parser = subparsers.add_parser("train-seg", help="train / fine-tune a text-prompted segmenter", description=__doc__)
    parser.add_argument("data", nargs="+", help="dataset folders or *_img.nii.gz files")
    parser.add_argument(
        "--model", default="text2d", choices=["text2d", "ct", "mri", "interactive"],
        help="text2d: the BiomedParse-V slice model (CT and MRI); ct: the ct-v1 decoder on the pretrained CT encoder (frozen, or its last stages fine-tuned too: --finetune-backbone; CT cases only); "
        "mri: the mri-v1 family, a text-prompted 3D model at a 1 mm grid (MRI cases only; --max-minutes / --steps, --lr, --batch-size, --structures, --base-model mri-v1 to fine-tune); "
        "interactive: the click/box/stroke model on the same encoder, trained with simulated interaction (CT cases only)",
    )
    parser.add_argument("--feature-cache", help="with --model ct or interactive: folder of cached encoder features (default: WORK_DIR/features; reused across runs)")
    parser.add_argument(
        "--finetune-backbone", default="auto", choices=["auto", "on", "off"],
        help="with --model ct: also fine-tune the CT encoder's last stages (layer3, layer4; bf16 on CUDA) with the decoder; "
        "auto (default) = on exactly when training runs on CUDA. The model then carries its own encoder (~235 MB, user store only)",
    )
    parser.add_argument("--out-name", required=True, help="name of the model in the user store (~/.medfound/models)")
    parser.add_argument("--work-dir", help="checkpoint folder (default: ~/.medfound/runs/NAME)")
    parser.add_argument("--output-dir", help="write the model here instead of the user store (e.g. to ship it)")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget; the model is saved when it runs out")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --work-dir")
    parser.add_argument("--base-model", default=None, help="fine-tune this model: a slice model ('default' = the starter model), "
                        "ct-v1 with --model ct, mri-v1 with --model mri, or a model fine-tuned from them")
    parser.add_argument("--preset", default=d.preset, choices=["tiny", "small", "base", "large"], help="model size (tiny trains on a CPU; large is for GPUs)")
    parser.add_argument("--image-size", type=int, default=d.image_size)
    parser.add_argument("--fve-k", type=int, default=d.fve_k, help="FVE order k (0 = no FVE: the focal slice in all three channels); default 1, or the base model's when fine-tuning")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default: {d.steps}; --model mri: until --max-minutes, else 20000)")
    parser.add_argument("--epochs", type=float, default=None, help="overrides --steps (one epoch = every slice once)")
    parser.add_argument("--lr", type=float, default=None, help=f"learning rate (default: {d.lr:g}; the recipe's own for --model ct, mri, interactive)")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default: {d.batch_size} (--model mri: 2 crops)")
    parser.add_argument("--prompts-per-image", type=int, default=d.prompts_per_image)
    parser.add_argument("--synth-fraction", type=float, default=d.synth_fraction)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument(
        "--scale-range", type=float, nargs=2, default=d.scale_range, metavar=("LO", "HI"),
        help="random per-axis scaling, as MONAI's scale minus one: 0.5 shows anatomy at 1/1.5 its size (default %(default)s)",
    )
    parser.add_argument("--no-isd", action="store_true", help="ablation: no presence discriminator")
    parser.add_argument("--no-grad-cutoff", action="store_true", help="ablation: let ISD gradients into the decoder")
    parser.add_argument("--single-view", action="store_true", help="train only on the view inference uses (no extra views of isotropic volumes)")
    parser.add_argument("--structures", nargs="*", help="train only these vocabulary keys")
    parser.add_argument("--holdout", nargs="*", default=[], help="subjects to leave out of training")
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--log-every", type=int, default=d.log_every, help="report the training metrics every N steps (and at the last step)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--quiet", action="store_true", help="no progress bar (metrics lines are still printed)")
    parser.add_argument(
        "--progress-json", action="store_true",
        help='progress and metrics as JSON lines on stdout ({"progress": ...}, {"metrics": ...}), for a calling program (Slicer)',
    )
    parser.set_defaults(func=run)


def fill_recipe_defaults(args: argparse.Namespace) -> None:
    """``--steps``, ``--lr`` and ``--batch-size`` left out take the chosen model family's own defaults
    (the slice model's for text2d, ct and interactive, as before; the MRI recipe's for mri)."""
    if args.model == "mri":
        from ..train.mri_segment import MRITrainConfig as Recipe
    else:
        from ..train.segment import TrainConfig as Recipe
    d = Recipe()
    for name in ("steps", "lr", "batch_size"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(d, name))


def config_from_args(args: argparse.Namespace):
    from ..train.segment import TrainConfig

    return TrainConfig(
        preset=args.preset,
        image_size=args.image_size,
        fve_k=args.fve_k,
        use_isd=not args.no_isd,
        isd_stop_gradient=not args.no_grad_cutoff,
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        prompts_per_image=args.prompts_per_image,
        synth_fraction=args.synth_fraction,
        augment=not args.no_augment,
        scale_range=tuple(args.scale_range),
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        seed=args.seed,
        base_model=args.base_model,
        structures=args.structures or None,
        max_minutes=args.max_minutes,
        all_views=not args.single_view,
    )


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import find_cases, split_by_subject
    from ..registry import medfound_home
    from ..train.checkpoint import latest_checkpoint
    from ..train.segment import train_segmenter

    fill_recipe_defaults(args)
    if args.epochs is not None and args.model != "text2d":  # an epoch is "every slice once": the slice model's unit
        raise InputError(f"--epochs applies to the slice model (--model text2d); --model {args.model} trains for --steps or --max-minutes")
    work_dir = Path(args.work_dir) if args.work_dir else medfound_home() / "runs" / args.out_name
    if latest_checkpoint(work_dir) is not None and not args.resume:
        raise InputError(f"{work_dir}: holds checkpoints of an earlier run; pass --resume to continue it or choose another --work-dir")
    refs = find_cases(args.data)
    train, held = split_by_subject(refs, args.holdout) if args.holdout else (refs, [])
    print(f"training on {len(train)} cases ({len({r.subject for r in train})} subjects); held out {len(held)}", file=sys.stderr)
    bar = json_progress() if args.progress_json else cli_progress(disable=args.quiet)

    def show(m: dict) -> None:
        rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
        if args.progress_json:  # beside the progress lines, where the caller reads them
            print(json.dumps({"metrics": rounded}), flush=True)
        else:
            print(json.dumps(rounded), file=sys.stderr, flush=True)

    try:
        if args.model == "ct":
            directory = _train_ct(args, train, work_dir, bar)
        elif args.model == "mri":
            directory = _train_mri(args, train, work_dir, bar)
        elif args.model == "interactive":
            directory = _train_interactive(args, train, work_dir, bar)
        else:
            directory = train_segmenter(
                train, config_from_args(args), args.out_name, work_dir, output_dir=args.output_dir, progress=bar, on_metrics=show
            )
    finally:
        bar.close()
    print(directory)
    return 0


def _train_ct(args: argparse.Namespace, train, work_dir: Path, bar):
    from ..device import resolve_device
    from ..train.ct_segment import CTTrainConfig, train_ct_from_cases

    cfg = CTTrainConfig(
        steps=args.steps, max_minutes=args.max_minutes, lr=args.lr, seed=args.seed, checkpoint_every=args.checkpoint_every,
        structures=args.structures or None,
    )
    return train_ct_from_cases(
        train, cfg, args.out_name, work_dir, feature_cache=args.feature_cache, output_dir=args.output_dir,
        base_model=args.base_model, device=str(resolve_device(args.device)), finetune_backbone=args.finetune_backbone, progress=bar,
    )


def _train_mri(args: argparse.Namespace, train, work_dir: Path, bar):
    from ..device import resolve_device
    from ..train.mri_segment import MRITrainConfig, train_mri_from_cases

    cfg = MRITrainConfig(steps=args.steps, max_minutes=args.max_minutes, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, structures=args.structures or None)  # fmt: skip
    return train_mri_from_cases(train, cfg, args.out_name, work_dir, output_dir=args.output_dir, base_model=args.base_model,
                                device=str(resolve_device(args.device)), progress=bar)


def _train_interactive(args: argparse.Namespace, train, work_dir: Path, bar):
    from ..device import resolve_device
    from ..train.interactive import InteractiveTrainConfig, train_interactive_from_cases

    cfg = InteractiveTrainConfig(steps=args.steps, max_minutes=args.max_minutes, lr=args.lr, seed=args.seed,
                                 checkpoint_every=args.checkpoint_every, structures=args.structures or None)
    return train_interactive_from_cases(
        train, cfg, args.out_name, work_dir, feature_cache=args.feature_cache, output_dir=args.output_dir,
        base_model=args.base_model, device=str(resolve_device(args.device)), progress=bar,
    )
