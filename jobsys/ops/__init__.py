"""Running and watching a deployment: `doctor` and its `probes`, the live views
(`monitor`), the Prometheus `exporter`, and `runner` (a whole system as child processes
for the demo, the tests and the benchmarks)."""
