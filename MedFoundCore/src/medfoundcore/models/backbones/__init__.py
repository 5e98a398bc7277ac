"""Image encoders, one home for all of them (one file each).

- ``ct_foundation`` / ``ct_weights``: the pretrained CT foundation encoder (Merlin-derived I3D ResNet-152) and its weights.
- ``encoder3d``: the 3DME dual-branch 3D encoder, its MAE and ``load_encoder`` for pretrained ones.
- ``image_encoder`` + ``fpn``: the 2D BiomedParse-V image encoder and its feature pyramid.
"""
