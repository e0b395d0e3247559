from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Generation API"

    def ready(self) -> None:
        # Registers the settings checks (fooocus.E0xx) with Django's system checks.
        from generation import checks  # noqa: F401
