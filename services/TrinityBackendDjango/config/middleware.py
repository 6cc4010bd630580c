"""A lost database answers 503 with a reason, never 500, wherever the error is raised.

Postgres stopped, restarting or unreachable raises OperationalError or InterfaceError at the
first query of a request; the request may succeed later, so the answer is 503. The driver's
text names hosts and roles: it goes to the log, never to the caller.

Two places catch it: the middleware for any view (the API, the admin), and ``server_error``
(``handler500`` in config/urls.py) for an error raised outside a view, by a middleware before
the view runs (none of ours queries the database today; django-tenants' TenantMainMiddleware
would, and is not used).
"""

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from django.views import defaults

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError)
UNAVAILABLE_REASON = "database unavailable, try again later"


def database_unavailable(exc: BaseException) -> JsonResponse:
    logger.warning("database unavailable: %s", " ".join(str(exc).split()) or type(exc).__name__)
    response = JsonResponse({"error": UNAVAILABLE_REASON}, status=503)
    response["Retry-After"] = "5"
    return response


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, DATABASE_ERRORS):
            return database_unavailable(exception)
        return None  # anything else: Django's usual handling


def server_error(request):
    """handler500: Django calls it inside its ``except`` block, so sys.exc_info() holds the
    error that a middleware (or, with no middleware above, a view) raised."""
    exc = sys.exc_info()[1]
    if isinstance(exc, DATABASE_ERRORS):
        return database_unavailable(exc)
    return defaults.server_error(request)
