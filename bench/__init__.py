"""warm-jax benchmarks: each module measures our side and its baseline in one run and prints
their ratio (see bench/README.md for the commands, bench/RESULTS.md for the latest numbers).
They are not timed tests; tests/test_bench_smoke.py runs our side at a minute size so that the
scripts keep working."""
