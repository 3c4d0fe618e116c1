"""What replication does in the database, one module per job. Callers import the module
that does the job they need; this package re-exports nothing.

- `engine`: the write engine. `batch_apply` / `batch_apply_many` apply chunks of changes
  for an actor (a user or `accounts.access.System`), with the per-database SQL (upserts,
  stored-state reads), the journal, range summaries, write hooks (search registers its index), the
  doorbell; also `collection_get_or_create`, `now_ms` and the actor's access per change.
- `documents`: single-document writes for an acting user (`document_put`,
  `document_delete`): the console, the HTTP API, GraphQL, commands.
- `replicas`: replica bookkeeping (connect, push, ack, disconnect) and the live feed's
  latency per minute.
- `events`: error events (`error_event_record`, DG-5005's `unservable_record`).
- `sessions`: replication sessions: `session_open` (the Connect decision), the session's
  push (`session_chunks_apply`), and the database half of re-checks during the session
  (token refresh, the access sweep). The event-loop half is replication/consumer_access.py.
"""
