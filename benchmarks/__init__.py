"""Performance benchmarks of calm-merge (benchmarks/README.md); run with `python -m benchmarks`."""
