"""The Celery app of the Django image: ``celery -A config.celery worker|beat|status|inspect``.

All settings come from :mod:`config.celery_settings` (shared with FastAPI).
"""

import os

from celery import Celery

from config.celery_settings import configure_or_exit, poll_results_only

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("trinity")
configure_or_exit(app)
# Views, the shell and commands read results by key (AsyncResult.state), never wait on them.
poll_results_only(app)

# Check Django's variables now too, so a worker with a bad DATABASE_URL stops at
# start with one line instead of failing on its first task.
from config.startup import load_settings_or_exit  # noqa: E402

load_settings_or_exit()

# Workers must survive a Redis restart with a task in flight (see config/kombu_fixes.py).
from config import kombu_fixes  # noqa: E402

kombu_fixes.apply()

# Tasks are found in every installed app's tasks.py (the Django fixup supplies the list).
app.autodiscover_tasks()

celery_app = app
