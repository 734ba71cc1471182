"""The zero-shot LLM judge and its calibration (rules: judge.smk)."""
