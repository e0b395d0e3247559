# The task kind (generate or an image tool) and the describe answer. Numbered 0010 to stay
# clear of the history migrations being written in parallel; it depends on the latest one.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("history", "0005_task_fill_indexed_columns"),
    ]

    operations = [
        migrations.AddField(
            model_name="task",
            name="kind",
            field=models.CharField(
                choices=[
                    ("generate", "generate"),
                    ("describe", "describe image"),
                    ("mask", "generate mask"),
                ],
                default="generate",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="task",
            name="text",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AddConstraint(
            model_name="task",
            constraint=models.CheckConstraint(
                condition=models.Q(("kind__in", ["generate", "describe", "mask"])),
                name="task_kind_valid",
            ),
        ),
    ]
