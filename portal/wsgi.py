"""The WSGI entry point for production servers: `gunicorn portal.wsgi:app`.

Settings come from the ENRS_* environment, read once when the worker imports this
module; a configuration error stops the worker with the one-line message."""
from __future__ import annotations

from portal.app import create_app

app = create_app()
