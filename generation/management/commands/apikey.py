"""``python manage.py apikey create|list|revoke``: manage API keys from the shell."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from generation.access import ALL_SCOPES, api_key_create, api_key_revoke, forget_auth_state
from generation.models import ApiKey


class Command(BaseCommand):
    help = "Create, list and revoke API keys (keys are stored hashed; shown once at creation)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a key and print it once")
        create.add_argument("name")
        create.add_argument(
            "--scope",
            action="append",
            choices=ALL_SCOPES,
            help="generate, read or admin (repeatable; default: generate and read)",
        )
        create.add_argument("--rpm", type=int, default=0, help="requests per minute (0 = default)")
        create.add_argument("--max-queued", type=int, default=0, help="waiting tasks (0 = default)")
        sub.add_parser("list", help="list keys (never their secrets)")
        revoke = sub.add_parser("revoke", help="revoke a key by its prefix")
        revoke.add_argument("prefix", help="the part after fk_ (8 hex characters)")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            scopes = options["scope"] or ["generate", "read"]
            key, text = api_key_create(
                name=options["name"],
                scopes=scopes,
                requests_per_minute=options["rpm"],
                max_queued_tasks=options["max_queued"],
            )
            forget_auth_state()
            self.stdout.write(text)
            self.stderr.write(
                f"created key {key.prefix} ({', '.join(key.scopes)}); store it now, "
                "it cannot be shown again"
            )
        elif action == "list":
            for key in ApiKey.objects.all():
                state = "revoked" if key.revoked_at else "active"
                used = key.last_used_at.isoformat() if key.last_used_at else "never"
                self.stdout.write(
                    f"{key.prefix}  {state:<7}  {','.join(key.scopes):<22}  used {used}  {key.name}"
                )
        elif action == "revoke":
            if not api_key_revoke(prefix=options["prefix"]):
                raise CommandError(f"no active key with prefix {options['prefix']!r}")
            forget_auth_state()
            self.stdout.write(f"revoked {options['prefix']}")
