"""Losses: segmentation (BiomedParse-V) and self-supervised (3DME, MiM, NEMESIS) objectives."""
