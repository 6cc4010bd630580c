from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("orchestration", "0002_lease_and_unique_ids"),
    ]

    operations = [
        migrations.AddField(
            model_name="taskrun",
            name="worker",
            field=models.CharField(blank=True, default="", max_length=255),
        ),
    ]
