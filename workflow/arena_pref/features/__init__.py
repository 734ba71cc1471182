"""The pair-feature members: cheap CPU preference models (rules: features.smk)."""
