from django.contrib import admin

from .models import TaskRun


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    list_display = ("id", "operation", "status", "attempts", "celery_task_id", "created_at",
                    "finished_at")
    list_filter = ("status", "operation")
    search_fields = ("celery_task_id",)
    readonly_fields = ("created_at", "updated_at", "started_at", "finished_at")
