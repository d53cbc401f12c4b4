"""The one error users see before any work starts, and the did-you-mean hint every check appends to it."""
from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A config problem, reported before any work starts (the CLI exits with status 2)."""


def suggest(name: str, allowed) -> str:
    """' Did you mean 'x'?' for the closest allowed name, or ''."""
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""
