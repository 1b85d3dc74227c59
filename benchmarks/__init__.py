"""dtrain's benchmarks: measured side by side with the peers in one run (see RESULTS.md)."""
