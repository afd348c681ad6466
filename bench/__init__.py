"""btsguru's benchmarks: `python -m bench SCENARIO [--full]` (see bench/README.md)."""
