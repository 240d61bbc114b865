"""normrt benchmarks: the pytest-benchmark suite (test_kernels.py) and the report (python -m bench.report)."""
