"""A GIN index on documents' bodies, on PostgreSQL only: data views' catch-up reads find the
documents of a view through it (`@>`, replication/protocol/mango.py `to_sql`). SQLite has no
such index; its reads evaluate the JSON of the collection's rows (bench/RESULTS.md)."""

from django.db import migrations

CREATE = (
    "CREATE INDEX IF NOT EXISTS document_body_gin ON replication_document "
    "USING gin (body jsonb_path_ops)"
)
DROP = "DROP INDEX IF EXISTS document_body_gin"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("replication", "0009_data_views")]

    operations = [migrations.RunPython(create, drop)]
