"""apps/orchestration/operations.py: an operation is added there alone."""

import pytest
from django.core.management import call_command

from apps.orchestration import operations
from apps.orchestration.models import TaskRun
from config.celery_settings import queue_for_operation


@pytest.mark.django_db
def test_adding_an_operation_needs_no_migration_and_nothing_else(monkeypatch):
    monkeypatch.setitem(operations.OPERATIONS, "added", operations.Operation(str, kind="io"))
    # Exits non-zero (SystemExit) when the models need a migration.
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
    assert ("added", "added") in TaskRun._meta.get_field("operation").choices
    assert queue_for_operation("added", {}) == "trinity.tasks.io"
    assert operations.run("added", 7) == "7"


def test_an_unknown_operation_names_the_known_ones():
    with pytest.raises(operations.UnknownOperation, match=r"^unknown operation 'nope'; known "
                                                          r"operations: echo, fail, noop"):
        operations.operation("nope")
