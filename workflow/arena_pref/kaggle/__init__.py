"""The offline Kaggle bundle: its contents, wheels and time estimate (rules: kaggle.smk)."""
