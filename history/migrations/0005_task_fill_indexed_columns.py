"""Fill ``model_name`` and ``performance`` of the tasks stored before they existed.

One UPDATE per column, computed by the database from the JSON (no rows pass through Python), so
it takes seconds even on a history of a million tasks.
"""

from typing import Any

from django.db import migrations
from django.db.models import CharField, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Left

# Request field -> column, and the column's length (longer values are cut to fit).
COPIED = {"base_model_name": ("model_name", 255), "performance_selection": ("performance", 64)}


def fill(apps: Any, schema_editor: Any) -> None:
    task = apps.get_model("history", "Task")
    for key, (column, length) in COPIED.items():
        text = Cast(KeyTextTransform(key, "req_params"), output_field=CharField())
        task.objects.using(schema_editor.connection.alias).update(
            **{column: Left(Coalesce(text, Value("")), length)}
        )


class Migration(migrations.Migration):
    dependencies = [("history", "0004_task_indexed_columns")]

    operations = [migrations.RunPython(fill, migrations.RunPython.noop, elidable=True)]
