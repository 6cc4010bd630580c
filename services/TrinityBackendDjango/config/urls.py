"""URL map: admin, the task-run API, readiness (/healthz) and liveness (/livez)."""

from django.contrib import admin
from django.urls import path

from apps.orchestration import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/task-runs/", views.task_runs, name="task-runs"),
    path("api/task-runs/<int:pk>/", views.task_run_detail, name="task-run-detail"),
    path("healthz", views.healthz, name="healthz"),
    path("livez", views.livez, name="livez"),
]

# A database error raised outside a view (by a middleware) answers 503 too.
handler500 = "config.middleware.server_error"
