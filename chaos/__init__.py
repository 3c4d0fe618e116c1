"""The fault-injection run (`make chaos`) and the checker that reads its history.

- `history.py`: the events a run records, one JSON object a line.
- `checker.py`: reads a whole history and says what went wrong (pure, no I/O, no Django).
- `proxy.py`: the TCP proxy between the clients and the daphne processes (latency, blackhole,
  reset, bandwidth).
- `topology.py`: the suite's own PostgreSQL database, redis-server and daphne processes.
- `clients.py`: SDK replicas, wire clients, an HTTP writer, a topics producer and consumers.
- `run.py`: the schedule of faults and the run itself (`python -m chaos`).

docs/guarantees.md says what is promised under which fault, and what the runs found.
"""
