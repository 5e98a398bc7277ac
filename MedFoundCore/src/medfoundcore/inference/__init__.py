"""Inference engines: text-prompted segmentation (:mod:`.segment`) and point prompts (:mod:`.click`)."""
