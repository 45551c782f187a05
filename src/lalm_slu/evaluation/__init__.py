"""Decoding, the cascade, and SLURP's metrics and scoring."""
