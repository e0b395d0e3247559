"""A full-text index on the request's prompt, for the admin's search.

SQLite: an FTS5 table keyed by the task's id, kept in step with ``history_task`` by triggers
(insert, delete, and updates of ``req_params``), and filled from the rows already there.
PostgreSQL: a stored ``tsvector`` column of the prompt ('simple' configuration: lower-cased
words, no stemming) with a GIN index. Both fold case and keep accents (FTS5 is told not to remove diacritics,
since PostgreSQL's 'simple' cannot without the unaccent extension).

Both are written in SQL because Django has no field for them. A later migration that makes
SQLite rebuild ``history_task`` (Django does for many field changes) drops the triggers with the
old table: ``tests/history/test_search.py`` checks they exist at the latest migration.
"""

from typing import Any

from django.db import migrations

SQLITE_FORWARD = [
    "CREATE VIRTUAL TABLE history_task_prompt_fts USING fts5("
    "prompt, tokenize = 'unicode61 remove_diacritics 0')",
    "INSERT INTO history_task_prompt_fts(rowid, prompt) "
    "SELECT id, COALESCE(json_extract(req_params, '$.prompt'), '') FROM history_task",
    "CREATE TRIGGER history_task_prompt_insert AFTER INSERT ON history_task BEGIN "
    "INSERT INTO history_task_prompt_fts(rowid, prompt) "
    "VALUES (new.id, COALESCE(json_extract(new.req_params, '$.prompt'), '')); END",
    "CREATE TRIGGER history_task_prompt_delete AFTER DELETE ON history_task BEGIN "
    "DELETE FROM history_task_prompt_fts WHERE rowid = old.id; END",
    "CREATE TRIGGER history_task_prompt_update AFTER UPDATE OF req_params ON history_task BEGIN "
    "UPDATE history_task_prompt_fts "
    "SET prompt = COALESCE(json_extract(new.req_params, '$.prompt'), '') "
    "WHERE rowid = new.id; END",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS history_task_prompt_update",
    "DROP TRIGGER IF EXISTS history_task_prompt_delete",
    "DROP TRIGGER IF EXISTS history_task_prompt_insert",
    "DROP TABLE IF EXISTS history_task_prompt_fts",
]
POSTGRES_FORWARD = [
    # A stored column, not an expression index alone: a list walked newest first tests each
    # row's words without parsing its JSON again, and ANALYZE keeps word statistics for it, so
    # the planner knows a rare word from a common one. Django's model does not list the column.
    "ALTER TABLE history_task ADD COLUMN prompt_tsv tsvector GENERATED ALWAYS AS "
    "(to_tsvector('simple'::regconfig, COALESCE(req_params ->> 'prompt', ''))) STORED",
    "CREATE INDEX history_task_prompt_tsv ON history_task USING GIN (prompt_tsv)",
]
POSTGRES_BACKWARD = [
    "DROP INDEX IF EXISTS history_task_prompt_tsv",
    "ALTER TABLE history_task DROP COLUMN IF EXISTS prompt_tsv",
]


def _run(statements: dict[str, list[str]]) -> Any:
    def run(apps: Any, schema_editor: Any) -> None:
        for statement in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("history", "0006_task_kind")]

    operations = [
        migrations.RunPython(
            _run({"sqlite": SQLITE_FORWARD, "postgresql": POSTGRES_FORWARD}),
            _run({"sqlite": SQLITE_BACKWARD, "postgresql": POSTGRES_BACKWARD}),
        )
    ]
