from django import forms
from django.contrib import admin

from .models import TaskRun
from .operations import OPERATIONS


class TaskRunForm(forms.ModelForm):
    # The model takes any name (no choices, so no migration per operation); the form offers
    # the operations that exist now.
    operation = forms.ChoiceField(choices=lambda: [(name, name) for name in sorted(OPERATIONS)])

    class Meta:
        model = TaskRun
        fields = "__all__"


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    form = TaskRunForm
    list_display = ("id", "operation", "status", "attempts", "celery_task_id", "created_at",
                    "finished_at")
    list_filter = ("status", "operation")
    search_fields = ("celery_task_id",)
    readonly_fields = ("created_at", "updated_at", "started_at", "finished_at")
