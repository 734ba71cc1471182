"""Per-fold training: targets, the Trainer, checkpoints, adapter averaging (rules: train.smk)."""
