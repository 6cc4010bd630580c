from django.db import migrations, models


class Migration(migrations.Migration):
    """TaskRun.operation loses its choices: the operations are checked against
    apps/orchestration/operations.py where work is submitted, so adding one needs no migration.
    (Choices never reached the database: this changes no column.)"""

    dependencies = [
        ("orchestration", "0002_lease_and_unique_ids"),
    ]

    operations = [
        migrations.AlterField(
            model_name="taskrun",
            name="operation",
            field=models.CharField(max_length=50),
        ),
    ]
