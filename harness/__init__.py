"""Support code shared by the tests (tests/) and the benchmarks (bench/); not part of the product.

- harness.data: UTKFace, CIFAR-10 and digits as `GroupDataset`s (the shared-data loaders).
- harness.server: a real `equiprune serve` in a subprocess on free loopback ports.
- harness.memory: large synthetic dataset archives and peak-memory measurement in a child.
- harness.load: a bounded mixed load (Predict, ReportOutcomes, job polling) from several
  tenants at once, with exactly-once outcome checks (bench/load_tenants.py and its slow test).

It lives outside tests/ so that benchmarks never import test modules (tests/test_harness.py
checks), and is not installed: it is imported from the repository root (pytest's
`pythonpath`, bench/_common.py's sys.path).
"""
