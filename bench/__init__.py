"""fleetpin benchmarks: each bench_*.py module has a `run()` that prints ratios measured in one run."""

# The ESP32 heap the agent's whole life must fit in (issue 19), in KB.
TARGET_KB = 64
