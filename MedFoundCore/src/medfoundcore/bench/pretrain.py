"""3DME pretraining throughput: samples/s of full training steps, and model FLOPs utilisation on GPU.

A step is exactly what ``medfound pretrain`` runs (progressive masking, masked autoencoder, 3DME loss
with the semantic term, AdamW), on synthetic crops so that the number measures the model, not the
disk; ``--data`` adds the rate at which real volumes are turned into crops. FLOPs per step are
counted by ``torch.utils.flop_counter`` (matmuls and convolutions, forward + backward); MFU divides
the achieved FLOP/s by the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import numpy as np
import torch

from ..device import autocast, resolve_device

NAME = "pretrain"

#: Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, from the vendors' data sheets.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12, "4090": 165e12, "V100": 125e12}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default="tiny", help="encoder preset (tiny | paper), default %(default)s")
    parser.add_argument("--crop-size", type=int, default=None, help="crop side (default: 48 on CPU, 128 on GPU)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--data", nargs="*", default=[], help="also time crop sampling from these volumes")


def _trainer(preset: str, crop: int, grad_checkpointing: bool, device: torch.device):
    from ..losses.ssl import ThreeDMELoss, frozen_copy
    from ..train.pretrain import Masker, PretrainConfig, _Pretrainer
    from ..models.backbones.encoder3d import build_mae3d

    config = PretrainConfig(encoder=preset, crop_size=crop, steps=100, grad_checkpointing=grad_checkpointing, device=str(device))
    mae = build_mae3d(config.encoder_config()).to(device)
    model = _Pretrainer(mae)
    loss_fn = ThreeDMELoss(config.loss_weights, frozen_copy(mae.encoder))
    optimizer = torch.optim.AdamW(mae.parameters(), lr=1e-4)
    return model, loss_fn, optimizer, Masker(config), mae


def _step(model, loss_fn, optimizer, masker, x: torch.Tensor, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    _, target, masks, _ = masker.batch(x.cpu(), 60, generator)
    masks = masks.to(device)
    with autocast(device):
        recon, _ = model(x, masks)
        loss = loss_fn(recon.float(), target.to(device), masks)["total"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _flops_per_step(model, loss_fn, optimizer, masker, x: torch.Tensor, device: torch.device) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:  # pragma: no cover - old torch
        return None
    counter = FlopCounterMode(display=False)
    with counter:
        _step(model, loss_fn, optimizer, masker, x, device)
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def _crop_rate(paths: list[str], crop: int, spacing: float, count: int = 8) -> dict[str, Any]:
    from ..train.pretrain import CropSampler, discover_volumes

    sampler = CropSampler(discover_volumes(paths), crop, spacing)
    rng = np.random.default_rng(0)
    sampler.sample(rng)
    start = time.perf_counter()
    for _ in range(count):
        sampler.sample(rng)
    elapsed = time.perf_counter() - start
    return {"volumes": len(sampler.files), "crops_per_s": round(count / elapsed, 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    crop = args.crop_size or (128 if device.type == "cuda" else 48)
    model, loss_fn, optimizer, masker, mae = _trainer(args.encoder, crop, args.grad_checkpointing, device)
    x = torch.rand(args.batch_size, 1, crop, crop, crop, device=device)
    for _ in range(2):
        _step(model, loss_fn, optimizer, masker, x, device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        _step(model, loss_fn, optimizer, masker, x, device)
    _sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    flops = _flops_per_step(model, loss_fn, optimizer, masker, x, device)
    peak = _peak(device)
    report: dict[str, Any] = {
        "benchmark": NAME,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "encoder": args.encoder,
        "parameters": sum(p.numel() for p in mae.parameters()),
        "crop": crop,
        "batch_size": args.batch_size,
        "seconds_per_step": round(seconds, 4),
        "samples_per_s": round(args.batch_size / seconds, 3),
        "tflop_per_step": round(flops / 1e12, 4) if flops else None,
        "achieved_tflop_s": round(flops / seconds / 1e12, 3) if flops else None,
        "mfu": round(flops / seconds / peak, 4) if flops and peak else None,
        "autocast": "bf16/fp16" if device.type == "cuda" else "fp32",
    }
    if args.data:
        report["data"] = _crop_rate(args.data, crop, 2.0 if device.type != "cuda" else 1.0)
    return report
