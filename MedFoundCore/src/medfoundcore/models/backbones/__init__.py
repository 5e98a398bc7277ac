"""Image encoders, one file each: the pretrained CT foundation encoder (``ct_foundation``) and its weights."""
