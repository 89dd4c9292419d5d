"""Benchmark runner: placeholder until the benchmark suite lands (see bench/README.md)."""

print("No benchmarks yet: see bench/README.md.")
