"""Cron expressions: five fields (minute hour day-of-month month day-of-week), the next
occurrence after an instant, in a time zone (UTC unless named).

Parsed by cronsim (a small, pure library: no clock, no I/O); a six-field
expression (with seconds) is refused, as are names it does not know.
"""

from __future__ import annotations

from datetime import UTC, datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import DagnatsError


class CronError(DagnatsError, ValueError):
    def __init__(self, expression: str, reason: str) -> None:
        self.expression, self.reason = expression, reason
        super().__init__(f"cron {expression!r}: {reason}")


def zone(name: str) -> ZoneInfo | timezone:
    if not name or name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError("", f"unknown time zone {name!r}") from None


def next_occurrence(expression: str, after: datetime, tz: str = "UTC") -> datetime:
    """The first time strictly after ``after`` that ``expression`` names, in UTC."""
    fields = expression.split()
    if len(fields) != 5:
        raise CronError(expression, f"needs 5 fields (minute hour day month weekday), not {len(fields)}")
    try:
        moment = next(CronSim(expression, after.astimezone(zone(tz))))
    except CronSimError as err:
        raise CronError(expression, str(err).lower() or "does not parse") from None
    except StopIteration:
        raise CronError(expression, "never occurs") from None
    return moment.astimezone(UTC)


def cron_problem(expression: str, tz: str = "UTC") -> str:
    """Why ``expression`` is not a usable cron, or ""."""
    try:
        next_occurrence(expression, datetime(2025, 1, 1, tzinfo=UTC), tz)
    except CronError as err:
        return err.reason
    return ""
