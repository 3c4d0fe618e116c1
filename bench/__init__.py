"""DataGate's benchmark suite: `make bench` (full sizes) or `make bench BENCH_ARGS=--quick`.

Each benchmark starts real servers (daphne on loopback), drives them with real replicas over
websockets, and measures in the same run the baseline it is compared with, so the figures
survive a noisy machine as ratios. `bench/RESULTS.md` holds the recorded figures and
`bench/results/` the raw JSON of every recorded run.

Layout: `__main__` runs one pass per storage backend, each in its own process (`run_pass`,
because Django's settings are per process); `harness` holds sizes, servers, machine facts and
client processes; `wire` is a lightweight protocol client; `clients` the client processes;
`bare_channels` and `bare_websockets` the fan-out baselines; one module per benchmark
(`servers`: daphne, uvicorn and granian side by side; `processes`: two daphne processes beside
one; `connect_path`: a Connect's steps in process); `report` writes RESULTS.md and
`profile_summary` sums a py-spy profile by step of the connect path.
"""
