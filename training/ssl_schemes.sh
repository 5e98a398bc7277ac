#!/usr/bin/env bash
# Issue 17 item 4: the seeds' three self-supervised schemes for the same CPU budget, each measured
# against random initialisation on the same hippocampus head (frozen and fine-tuned).
#   bash training/ssl_schemes.sh            (from the repository root, venv active; ~2.5 h on 2 cores)
# Pretraining: the tiny 3DME encoder, 32^3 crops at 1 mm, one thread per run, two runs side by side;
# each scheme's step count is what ~20 minutes of one core gives at its step time measured with two runs
# side by side (progressive 0.103 s, MiM 0.36 s, dual-axis 0.20 s), with a hard stop a little later.
# Unlabelled volumes: MSD hippocampus images of benchmark fold 0's training part (never its 40
# held-out cases), BraTS 2013 patients 1-3, MNI152 and Colin27 (168 volumes; 4 held out for PSNR).
# Downstream: training/tools/ssl_schemes_eval.py (the same UNet head, 600 steps, fold 0 -> its 40
# held-out cases; also with only 8 labelled cases). Everything goes to runs/ssl (never committed); the
# table is in docs/pretraining.md.
set -euo pipefail
. training/mri_sets.sh
OUT=runs/ssl
mkdir -p $OUT
FILES="$(for c in $HIPPO_TRAIN; do echo $D/msd_hippocampus/${c}_img.nii.gz; done) $(ls $D/brats2013/brats_2013_pat000[1-3]_1_*_img.nii.gz) \
  $D/mni152_nilearn/mni152_2009a_t1_img.nii.gz $D/colin27_mricron/colin27_ch2_img.nii.gz"
COMMON='"encoder": "tiny", "crop_size": 32, "spacing_mm": 1.0, "lr": 0.001, "warmup_steps": 100, "semantic_refresh_every": 500,
 "seed": 0, "keep_checkpoints": 2, "holdout": 4, "eval_crops": 8, "device": "cpu"'
# progressive (3DME): 4^3/30 % -> 16^3/75 % over the run
echo "{$COMMON, \"masking\": \"progressive\", \"checkpoint_every\": 1000, \"eval_every\": 1000, \"steps\": 11600, \"batch_size\": 2, \"time_limit_minutes\": 21}" > $OUT/progressive.json
# MiM: the paper's 3 levels, patches = the encoder's 4^3 token grid, level 1 = 64 mm resized to the crop,
# gamma 2 per level (paper 4: 21 volumes per sample is too slow for this budget), InfoNCE weight 0.1
echo "{$COMMON, \"masking\": \"mim\", \"masking_options\": {\"levels\": 3, \"gamma\": 2, \"ratio\": 0.6, \"level1_scale\": 2,
 \"infonce_weight\": 0.1}, \"checkpoint_every\": 500, \"eval_every\": 500, \"steps\": 3500, \"batch_size\": 1, \"time_limit_minutes\": 24}" > $OUT/mim.json
# dual-axis (NEMESIS/MAESIL): plane- and axis-wise token masks in parallel, noisy input, 4 NEMESIS tokens
echo "{$COMMON, \"encoder_overrides\": {\"context_tokens\": 4}, \"masking\": \"dual_axis\", \"masking_options\":
 {\"plane_ratio\": 0.5, \"axis_ratio\": 0.5, \"noise_sigma\": 0.05}, \"checkpoint_every\": 1000, \"eval_every\": 1000, \"steps\": 5400, \"batch_size\": 2, \"time_limit_minutes\": 24}" > $OUT/dual_axis.json
pretrain() { OMP_NUM_THREADS=1 medfound pretrain $FILES --work-dir $OUT/$1 --config $OUT/$1.json --quiet > $OUT/$1.log 2>&1; }
# two runs at a time, one per core; a downstream run starts only when a core is free of pretraining
pretrain mim & M=$!
pretrain dual_axis & A=$!
wait $M; pretrain progressive & P=$!
EVAL="python training/tools/ssl_schemes_eval.py --work $OUT/eval"
wait $A
OMP_NUM_THREADS=1 $EVAL --json $OUT/eval-a.json --arm random=random:$OUT/mim/encoder:frozen --arm random=random:$OUT/mim/encoder:finetuned \
  --arm mim=$OUT/mim/encoder:frozen --arm mim=$OUT/mim/encoder:finetuned > $OUT/eval-a.log 2>&1 &
wait $P
OMP_NUM_THREADS=1 $EVAL --json $OUT/eval-b.json --arm progressive=$OUT/progressive/encoder:frozen --arm progressive=$OUT/progressive/encoder:finetuned \
  --arm dual_axis=$OUT/dual_axis/encoder:frozen --arm dual_axis=$OUT/dual_axis/encoder:finetuned > $OUT/eval-b.log 2>&1
wait
# few labels (the first 8 training cases), and a second seed for the one interval above zero
N8="$EVAL --train-cases 8"
OMP_NUM_THREADS=1 $N8 --json $OUT/eval-n8a.json --arm random-n8=random:$OUT/progressive/encoder:frozen --arm random-n8=random:$OUT/progressive/encoder:finetuned \
  --arm progressive-n8=$OUT/progressive/encoder:frozen --arm progressive-n8=$OUT/progressive/encoder:finetuned > $OUT/eval-n8a.log 2>&1 &
OMP_NUM_THREADS=1 $N8 --json $OUT/eval-n8b.json --arm mim-n8=$OUT/mim/encoder:frozen --arm mim-n8=$OUT/mim/encoder:finetuned \
  --arm dual_axis-n8=$OUT/dual_axis/encoder:frozen --arm dual_axis-n8=$OUT/dual_axis/encoder:finetuned > $OUT/eval-n8b.log 2>&1
wait
OMP_NUM_THREADS=1 $EVAL --seed 1 --json $OUT/eval-s1.json --arm random-s1=random:$OUT/progressive/encoder:frozen \
  --arm progressive-s1=$OUT/progressive/encoder:frozen > $OUT/eval-s1.log 2>&1
python training/tools/ssl_schemes_eval.py --table $OUT/eval-a.json $OUT/eval-b.json $OUT/eval-n8a.json $OUT/eval-n8b.json $OUT/eval-s1.json
