"""Baselines measured beside digitserve in every benchmark run."""
