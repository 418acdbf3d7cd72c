"""Benchmark harness: digitserve against a naive Flask baseline and the HTTP floor, same run."""
