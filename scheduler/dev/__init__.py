"""Development harness: a private redis-server for the demo, the tests and the benchmarks."""
