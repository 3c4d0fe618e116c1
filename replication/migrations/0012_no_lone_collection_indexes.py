"""Drop the single-column `collection_id` indexes Django made for the foreign keys of
documents, tombstones and journal entries.

Each table has a unique index that starts with the collection ((collection, doc_id),
(collection, seq)), which serves every lookup by collection alone, so the lone index only cost
writes. Worse, on PostgreSQL it misled the planner: on a collection that grew faster than
ANALYZE ran, the planner took the lone index for the cheaper one and scanned every row of the
collection to find a few ids (bench/RESULTS.md, "the full run on a quiet machine, and the write
path"). The index is found by introspection (its name carries a hash) and dropped in place on
both backends; SQLite would otherwise copy the whole table to change the field.
"""

from django.db import migrations, models

TABLES = ("replication_document", "replication_tombstone", "replication_journalentry")


def lone_collection_indexes(connection, table):
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    return [
        name
        for name, info in constraints.items()
        if info["index"]
        and not info["unique"]
        and not info["primary_key"]
        and info["columns"] == ["collection_id"]
    ]


def drop(apps, schema_editor):
    connection = schema_editor.connection
    for table in TABLES:
        for name in lone_collection_indexes(connection, table):
            schema_editor.execute(f"DROP INDEX {schema_editor.quote_name(name)}")


def create(apps, schema_editor):
    for model_name in ("Document", "Tombstone", "JournalEntry"):
        model = apps.get_model("replication", model_name)
        if not lone_collection_indexes(schema_editor.connection, model._meta.db_table):
            schema_editor.execute(
                schema_editor._create_index_sql(model, fields=[model._meta.get_field("collection")])
            )


def field(related_name):
    return models.ForeignKey(
        db_index=False,
        on_delete=models.deletion.CASCADE,
        related_name=related_name,
        to="replication.collection",
    )


class Migration(migrations.Migration):
    dependencies = [("replication", "0011_view_history")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField("document", "collection", field("documents")),
                migrations.AlterField("tombstone", "collection", field("tombstones")),
                migrations.AlterField("journalentry", "collection", field("journal")),
            ],
            database_operations=[migrations.RunPython(drop, create)],
        )
    ]
