"""fleetpin benchmarks: each bench_*.py module has a `run()` that prints ratios measured in one run."""
