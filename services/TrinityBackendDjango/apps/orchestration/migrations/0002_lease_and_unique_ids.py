from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("orchestration", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="taskrun",
            name="idempotency_key",
            field=models.CharField(blank=True, default="", max_length=255),
        ),
        migrations.AddField(
            model_name="taskrun",
            name="lease_owner",
            field=models.CharField(blank=True, default="", max_length=300),
        ),
        migrations.AddField(
            model_name="taskrun",
            name="lease_expires_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="taskrun",
            name="worker_lost",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="taskrun",
            name="republished",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddConstraint(
            model_name="taskrun",
            constraint=models.UniqueConstraint(
                condition=models.Q(("celery_task_id", ""), _negated=True),
                fields=("celery_task_id",), name="taskrun_unique_task_id"),
        ),
        migrations.AddConstraint(
            model_name="taskrun",
            constraint=models.UniqueConstraint(
                condition=models.Q(("idempotency_key", ""), _negated=True),
                fields=("idempotency_key",), name="taskrun_unique_idempotency_key"),
        ),
    ]
