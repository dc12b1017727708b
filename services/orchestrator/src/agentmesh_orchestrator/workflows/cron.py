"""Cron expressions for schedules: the five classic fields, parsed once.

    minute hour day-of-month month day-of-week
    0-59   0-23 1-31         1-12  0-7 (0 and 7 are Sunday)

Each field is `*`, a value, a range `a-b`, a list `a,b`, and any of these with a step `/n`;
months and weekdays also take names (`jan`, `mon`). `@hourly`, `@daily` (`@midnight`),
`@weekly`, `@monthly` and `@yearly` (`@annually`) stand for their usual expansions. As in
Vixie cron, when both day fields are restricted a day matches if either does.

Times are wall-clock times in the schedule's time zone (UTC unless one is given). A wall time
that does not exist (a spring-forward gap) is skipped; one that happens twice (fall back)
fires once, at its first occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {name: i + 1 for i, name in enumerate(_MONTHS)}),
    ("day of week", 0, 7, {name: i for i, name in enumerate(_DAYS)}),
)
# The longest gap between two firings of a satisfiable expression (Feb 29 on a given weekday)
# is under 28 years; searching further means it never fires.
_HORIZON = timedelta(days=366 * 29)


class CronError(ValueError):
    """An expression that does not parse, or never fires."""


@dataclass(frozen=True)
class Cron:
    """A parsed expression; `next_after(t)` is the first firing strictly after `t`."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def next_after(self, moment: datetime, zone: tzinfo = UTC) -> datetime:
        if moment.tzinfo is None:
            raise ValueError("next_after needs an aware datetime")
        local = moment.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
        wall = local + timedelta(minutes=1)
        limit = wall + _HORIZON
        while wall < limit:
            if wall.month not in self.months:
                wall = _first_of_next_month(wall)
            elif not self._day_matches(wall):
                wall = wall.replace(hour=0, minute=0) + timedelta(days=1)
            elif wall.hour not in self.hours:
                wall = wall.replace(minute=0) + timedelta(hours=1)
            elif wall.minute not in self.minutes:
                wall += timedelta(minutes=1)
            else:
                fired = _aware(wall, zone)
                if fired is not None and fired > moment:
                    return fired.astimezone(UTC)
                wall += timedelta(minutes=1)
        raise CronError(f"{self.text!r} never fires")

    def _day_matches(self, wall: datetime) -> bool:
        day = wall.day in self.days
        weekday = (wall.isoweekday() % 7) in self.weekdays
        if self.any_day:
            return weekday
        if self.any_weekday:
            return day
        return day or weekday


def parse(text: str) -> Cron:
    """Parse an expression; CronError says which field is wrong and why."""
    expanded = MACROS.get(text.strip().lower(), text)
    fields = expanded.split()
    if len(fields) != 5:
        raise CronError(
            f"{text!r} has {len(fields)} fields; a cron expression has 5 "
            "(minute hour day-of-month month day-of-week) or is one of " + ", ".join(MACROS)
        )
    values = [
        _field(raw.lower(), name, low, high, names)
        for raw, (name, low, high, names) in zip(fields, _FIELDS, strict=True)
    ]
    weekdays = frozenset(day % 7 for day in values[4])
    cron = Cron(
        text=text,
        minutes=values[0],
        hours=values[1],
        days=values[2],
        months=values[3],
        weekdays=weekdays,
        any_day=fields[2].startswith("*"),
        any_weekday=fields[4].startswith("*"),
    )
    cron.next_after(datetime(2000, 1, 1, tzinfo=UTC))  # CronError if it can never fire
    return cron


def _field(raw: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    chosen: set[int] = set()
    for part in raw.split(","):
        span, _, step_text = part.partition("/")
        step = _number(step_text, name, names={}) if step_text else 1
        if step_text and step < 1:
            raise CronError(f"{name}: step {step_text!r} must be at least 1")
        if span == "*":
            start, end = low, high
        elif "-" in span:
            first, _, last = span.partition("-")
            start, end = _number(first, name, names), _number(last, name, names)
        else:
            start = _number(span, name, names)
            end = high if step_text else start
        if not low <= start <= high or not low <= end <= high:
            raise CronError(f"{name}: {part!r} is outside {low}-{high}")
        if start > end:
            raise CronError(f"{name}: range {span!r} runs backwards")
        chosen.update(range(start, end + 1, step))
    return frozenset(chosen)


def _number(text: str, name: str, names: dict[str, int]) -> int:
    if text in names:
        return names[text]
    if not text.isdigit():
        raise CronError(f"{name}: {text!r} is not a number" + (" or a name" if names else ""))
    return int(text)


def _first_of_next_month(wall: datetime) -> datetime:
    year, month = (wall.year + 1, 1) if wall.month == 12 else (wall.year, wall.month + 1)
    return datetime(year, month, 1)


def _aware(wall: datetime, zone: tzinfo) -> datetime | None:
    """`wall` in `zone`, or None when that wall time does not exist there."""
    aware = wall.replace(tzinfo=zone, fold=0)
    round_trip = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    return aware if round_trip == wall else None
