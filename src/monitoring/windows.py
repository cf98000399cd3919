"""Time windows of the monitoring commands: ``2024-01-01..2024-02-29`` or ``last 30 days``.

A window is ``[start, end)`` in UTC. "Last N days" counts back from an anchor, which is
the latest event the data holds (not the wall clock): on a live lake that is about now,
and on a historical dataset such as MovieLens it is the dataset's own end.
``previous N days`` is the N days just before the last N, the natural reference of a
"last N days" current window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

_RANGE = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})\s*(?:\.\.|/|to)\s*(\d{4}-\d{2}-\d{2})\s*$")
_RELATIVE = re.compile(r"^\s*(last|previous)\s+(\d+)\s*(day|days|d)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Window:
    """``[start, end)`` in UTC, and the text it was written as."""

    start: datetime
    end: datetime
    label: str

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"window {self.label!r} is empty: it ends before it starts")

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86_400


def _day(text: str, label: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as error:
        raise ValueError(f"window {label!r}: {text!r} is not a date (YYYY-MM-DD)") from error


def parse_window(text: str, anchor: datetime) -> Window:
    """``A..B`` (both days included), ``last N days`` or ``previous N days`` before
    ``anchor`` (the latest event; its own day counts as the last day of the window)."""
    if (match := _RANGE.match(text)) is not None:
        first, last = _day(match.group(1), text), _day(match.group(2), text)
        if last < first:
            raise ValueError(f"window {text!r} ends before it starts")
        start = datetime.combine(first, time(), UTC)
        return Window(start, datetime.combine(last + timedelta(days=1), time(), UTC), text)
    if (match := _RELATIVE.match(text)) is not None:
        days = int(match.group(2))
        if days < 1:
            raise ValueError(f"window {text!r}: N must be at least 1")
        anchor = anchor if anchor.tzinfo else anchor.replace(tzinfo=UTC)
        end = datetime.combine(anchor.astimezone(UTC).date() + timedelta(days=1), time(), UTC)
        if match.group(1).lower() == "previous":
            end -= timedelta(days=days)
        return Window(end - timedelta(days=days), end, text)
    raise ValueError(
        f"window {text!r} is neither a date range (2024-01-01..2024-02-29) nor "
        "'last N days' / 'previous N days'"
    )
