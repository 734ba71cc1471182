"""Prediction with A/B-swap TTA and the prediction files every member writes (rules: predict.smk)."""
