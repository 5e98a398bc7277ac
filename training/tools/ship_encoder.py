"""Install a pretrained encoder (``WORK_DIR/encoder`` from ``medfound pretrain``) as a shipped model.

    python training/tools/ship_encoder.py /tmp/medfound-encoder-v1/encoder encoder-v1

Re-saves the weights (sha256-verified on read) under ``medfoundcore/weights/NAME`` with the card
renamed to NAME and the run's metrics.json summary (loss and held-out PSNR curve) in the card.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medfoundcore.registry import PACKAGED_DIR, load_model, save_model


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    source, name = Path(argv[0]), argv[1]
    state, card = load_model(source)
    metrics_file = source.parent / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        card.metrics["psnr_db"] = metrics["psnr"]
        card.metrics["held_out"] = [Path(p).name for p in metrics["held_out"]]
        card.metrics["steps"] = len(metrics["history"])
        card.metrics["train_seconds"] = round(metrics["history"][-1]["seconds"], 1) if metrics["history"] else None
    card.name = name
    card.sha256 = ""
    card.created = ""
    target = save_model(state, card, PACKAGED_DIR / name, fp16=True, overwrite=True)
    size = (target / "model.safetensors").stat().st_size
    print(f"{target}: {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
