"""Developer tools outside the workflow: benchmarks, the real-data check, the GPU check (not in the Kaggle bundle)."""
