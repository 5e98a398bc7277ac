# The MRI cases of mri-v1 (source this file from the repository root with the venv active).
# Held out by subject: the 40 MSD hippocampus cases of fold 0 of `medfound benchmark msd-hippocampus`
# (seed 0, 5 folds: the cases the benchmark scores every method on), BraTS 2013 patients 4 and 5 (FLAIR
# and T1c each), and the spine-generic subject unf01 (T1w, T2w, T2*; manual cord labels).
D=${MEDFOUND_DATA:-../shared/data}
HIPPO_HELD=$(python training/tools/hippocampus_fold.py --fold 0 --part test)
HIPPO_TRAIN=$(python training/tools/hippocampus_fold.py --fold 0 --part train)
TRAIN="$(for c in $HIPPO_TRAIN; do echo $D/msd_hippocampus/${c}_img.nii.gz; done) $(ls $D/brats2013/brats_2013_pat000[1-3]_1_*_img.nii.gz) \
  $D/sct_example_data/errsm30_t1w_img.nii.gz $D/sct_tutorial_data/sub-05_MTon_img.nii.gz $D/mni152_nilearn/mni152_2009a_t1_img.nii.gz"
HELD="$(for c in $HIPPO_HELD; do echo $D/msd_hippocampus/${c}_img.nii.gz; done) $(ls $D/brats2013/brats_2013_pat000[45]_1_*_img.nii.gz) \
  $(ls $D/spinegeneric_ivadomed/unf01_*_img.nii.gz)"
