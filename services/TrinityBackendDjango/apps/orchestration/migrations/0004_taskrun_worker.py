from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("orchestration", "0003_operation_choices_from_operations"),
    ]

    operations = [
        migrations.AddField(
            model_name="taskrun",
            name="worker",
            field=models.CharField(blank=True, default="", max_length=255),
        ),
    ]
