"""One-line errors for users.

Anything a user can get wrong (a path, an option, a file) raises `UserError` with a message that
says what was wrong and what to do. The command line prints it as one line and exits with status 2;
everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class RunStopped(Exception):
    """A pretraining run asked to stop by a signal (Ctrl-C, SIGTERM from a scheduler, SIGUSR1
    before a time limit), stopped after a step with its checkpoint written."""

    def __init__(self, signal_number: int, message: str):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_status = 128 + signal_number  # as if the signal had ended it: schedulers read this


def nearest(name: str, valid: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or '' when nothing is close. Case is
    ignored when comparing, so 'SimCLR' finds 'simclr'."""
    by_lower: dict[str, str] = {}
    for v in valid:
        by_lower.setdefault(str(v).lower(), str(v))
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def unknown_choice(kind: str, name: str, valid: Iterable[str]) -> UserError:
    valid = sorted(valid)
    return UserError(f"unknown {kind} {name!r}{nearest(name, valid)}; valid: {', '.join(valid)}")
