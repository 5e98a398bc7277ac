D=${MEDFOUND_DATA:-../shared/data}
TRAIN="$D/totalsegmentator/ts_ct_full_img.nii.gz $D/totalsegmentator/ts_aorta_crop_img.nii.gz $D/cip_chest_ct64/ct-64_img.nii.gz $D/tptbox_spine/sub-ct_label-22_img.nii.gz $(ls $D/openkbp/train_pt_*_img.nii.gz | sort -V | head -60)"
# ct-v1 as retrained 2026-12-07: every OpenKBP training patient, and simulated appearances of the one
# abdominal patient (contrast phases, thick slices, 45 mm slabs; training/tools/ct_variants.py writes them)
VARIANTS=runs/ct-variants
TRAIN_ALL="$D/totalsegmentator/ts_ct_full_img.nii.gz $D/totalsegmentator/ts_aorta_crop_img.nii.gz $D/cip_chest_ct64/ct-64_img.nii.gz $D/tptbox_spine/sub-ct_label-22_img.nii.gz $(ls $D/openkbp/train_pt_*_img.nii.gz | sort -V) $VARIANTS"
HELD="$D/totalsegmentator/ts_ct_dicom20_img.nii.gz $D/msd_spleen_clara/spleen_8_img.nii.gz $(ls $D/openkbp/test_pt_*_img.nii.gz | sort -V | head -10)"
S="liver spleen kidney_left kidney_right pancreas stomach gallbladder aorta inferior_vena_cava vertebrae spinal_cord brainstem parotid_gland_left parotid_gland_right mandible esophagus larynx"
# the structures ct-v1 learns (vocabulary keys; unions such as "kidney" are trained as their own prompt)
K="liver spleen kidney_left kidney_right kidney pancreas stomach gallbladder duodenum colon small_bowel urinary_bladder adrenal_gland_left adrenal_gland_right adrenal_gland aorta inferior_vena_cava esophagus airway lung_left lung_right lung vertebrae sacrum ribs spinal_cord brainstem parotid_gland_left parotid_gland_right parotid_gland mandible larynx"
# the structures the interactive model is scored on (bench click --structures): classes never trained on
# (spleen, parotids, autochthon muscles: held out of training; humerus: in no training label) and trained ones
CLICK_S="spleen parotid_gland_left parotid_gland_right autochthon_left autochthon_right humerus_left humerus_right liver stomach pancreas colon aorta inferior_vena_cava portal_vein_and_splenic_vein adrenal_gland_right vertebra_T11 vertebra_T12 spinal_cord brainstem mandible esophagus larynx"
