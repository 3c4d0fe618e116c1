"""datagate_replica: a local SQLite replica that syncs with a DataGate server."""

__version__ = "0.1.0"
