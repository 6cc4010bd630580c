"""The Celery app of the Django image: ``celery -A config.celery worker|beat|status|inspect``.

All settings come from :mod:`config.celery_settings` (shared with FastAPI).
"""

import os

from celery import Celery

from config import celery_fixes, kombu_fixes
from config.celery_settings import configure_celery_app
from config.startup import load_settings_or_exit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("trinity")
configure_celery_app(app)
# Views, the shell and commands read results by key (AsyncResult.state), never wait on them.
celery_fixes.poll_results_only(app)

# Check Django's variables now too, so a worker with a bad DATABASE_URL stops at
# start with one line instead of failing on its first task.
load_settings_or_exit()

# Workers must survive a Redis restart with a task in flight (see config/kombu_fixes.py).
kombu_fixes.apply()

# Tasks are found in every installed app's tasks.py (the Django fixup supplies the list).
app.autodiscover_tasks()
