"""Django's shell, minus the "N objects imported automatically" line under ``-c``.

With ``-c`` the output is meant for scripts (``TASK_ID=$(manage.py shell -c "...print(result.id)")``
in the runbook); the notice would end up in the captured value. Interactive use is unchanged.
"""

from django.core.management.commands.shell import Command as DjangoShellCommand


class Command(DjangoShellCommand):
    def get_namespace(self, **options):
        if options.get("command"):
            options = {**options, "verbosity": 0}
        return super().get_namespace(**options)
