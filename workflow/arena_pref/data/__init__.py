"""Reading the Kaggle CSVs, folds, the demo data, prompt templates and token caches (rules: data.smk, tokenize.smk)."""
