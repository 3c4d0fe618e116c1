"""RangeBucket rows become groups of 64 buckets (replication/protocol/ranges.py, STORED_BITS):
a write then upserts at most 64 rows per batch. Counts add and hashes XOR, so the groups are
computed from the per-bucket rows 0005 wrote, without reading the documents again."""

from django.db import migrations

GROUP_SHIFT = 6  # replication.protocol.ranges.GROUP_SHIFT when this migration was written
U64 = 1 << 64


def group_rows(apps, schema_editor):
    RangeBucket = apps.get_model("replication", "RangeBucket")
    collection_ids = set(RangeBucket.objects.values_list("collection_id", flat=True))
    for collection_id in sorted(collection_ids):
        groups: dict[int, tuple[int, int]] = {}
        rows = RangeBucket.objects.filter(collection_id=collection_id)
        for bucket, count, value in rows.values_list("bucket", "count", "hash"):
            group = bucket >> GROUP_SHIFT
            held_count, held_hash = groups.get(group, (0, 0))
            groups[group] = (held_count + count, held_hash ^ (value % U64))
        rows.delete()
        RangeBucket.objects.bulk_create(
            [
                RangeBucket(
                    collection_id=collection_id,
                    bucket=group,
                    count=count,
                    hash=value - U64 if value >= U64 // 2 else value,
                )
                for group, (count, value) in sorted(groups.items())
            ]
        )


class Migration(migrations.Migration):
    dependencies = [
        ("replication", "0007_collection_journal_retention"),
    ]

    operations = [
        migrations.RunPython(group_rows, migrations.RunPython.noop),
    ]
