"""Blending members, post-rules and the report's figures (rules: blend.smk)."""
