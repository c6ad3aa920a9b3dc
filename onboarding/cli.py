"""Onboarding's `enrs` commands, registered by portal.cli."""
from __future__ import annotations

from typing import Callable

import click


def register(main: click.Group, with_app: Callable, command_error: type[click.ClickException]) -> None:
    """Attach onboarding's commands to the `enrs` group."""
