"""Data for training: labelled cases (:mod:`.datasets`), synthetic images (:mod:`.synth`), augmentation
(:mod:`.augment`) and where the shared data lives (:mod:`.paths`)."""
