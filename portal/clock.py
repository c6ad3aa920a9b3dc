"""The current time, injectable so that tests move time instead of sleeping."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from flask import current_app, has_app_context

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


def now() -> datetime:
    """Aware UTC now, from the app's clock when one was injected (tests)."""
    if has_app_context():
        return current_app.extensions.get("enrs.clock", system_clock)()
    return system_clock()
