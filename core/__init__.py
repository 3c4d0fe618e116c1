"""What every app uses: the error catalogue, the per-process hub, consumer and daphne support,
and the metrics registry.

Nothing here imports an app (replication, topics, api, console, ...); every app may import it.
"""
