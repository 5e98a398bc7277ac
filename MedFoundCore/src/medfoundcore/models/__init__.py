"""Neural networks: the text-prompted 2D BiomedParse-V segmenter and the 3D encoder (one concept per file).

Import the concrete modules directly (``from medfoundcore.models.prompted_segmenter import build_segmenter``);
this package keeps its import light so that ``import medfoundcore`` stays fast.
"""
