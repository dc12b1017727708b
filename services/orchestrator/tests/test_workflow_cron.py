"""Cron expressions for schedules (issue 14)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from agentmesh_orchestrator.workflows.cron import CronError, parse


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * *", "2026-12-05T18:30:10", "2026-12-05T18:31:00"),
        ("*/15 * * * *", "2026-12-05T18:30:00", "2026-12-05T18:45:00"),
        ("0 9 * * mon-fri", "2026-12-05T18:00:00", "2026-12-07T09:00:00"),  # Sat -> Mon
        ("30 2 1 * *", "2026-12-05T00:00:00", "2027-01-01T02:30:00"),
        ("0 0 29 feb *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),
        ("@hourly", "2026-12-05T18:00:00", "2026-12-05T19:00:00"),
        ("@daily", "2026-12-31T23:59:59", "2027-01-01T00:00:00"),
        ("@weekly", "2026-12-05T00:00:00", "2026-12-06T00:00:00"),  # Sunday
        ("0 12 * * 7", "2026-12-05T00:00:00", "2026-12-06T12:00:00"),  # 7 is Sunday too
        ("5,10-12/2 * * * *", "2026-12-05T18:10:00", "2026-12-05T18:12:00"),
        ("0 0 13 * fri", "2026-12-05T00:00:00", "2026-12-11T00:00:00"),  # either day matches
        ("0 0 1 jan *", "2026-12-05T00:00:00", "2027-01-01T00:00:00"),
        ("10/20 * * * *", "2026-12-05T18:31:00", "2026-12-05T18:50:00"),
    ],
)
def test_next_firing(expression: str, after: str, expected: str) -> None:
    assert parse(expression).next_after(at(after)) == at(expected)


def test_a_time_zone_is_wall_clock_there() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    daily_nine = parse("0 9 * * *")
    assert daily_nine.next_after(at("2026-12-05T09:00:00"), berlin) == at("2026-12-06T08:00:00")
    # 2027-03-28 02:30 does not exist in Berlin: skipped to the next day.
    half_past_two = parse("30 2 * * *")
    assert half_past_two.next_after(at("2027-03-27T12:00:00"), berlin) == at("2027-03-29T00:30:00")
    # 2027-10-31 02:30 happens twice: fires at the first only.
    first = half_past_two.next_after(at("2027-10-30T12:00:00"), berlin)
    assert first == at("2027-10-31T00:30:00")
    assert half_past_two.next_after(first, berlin) == at("2027-11-01T01:30:00")


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "has 4 fields"),
        ("60 * * * *", "minute: '60' is outside 0-59"),
        ("* 24 * * *", "hour: '24' is outside 0-23"),
        ("* * 0 * *", "day of month: '0' is outside 1-31"),
        ("* * * 13 *", "month: '13' is outside 1-12"),
        ("* * * * 8", "day of week: '8' is outside 0-7"),
        ("*/0 * * * *", "step '0' must be at least 1"),
        ("5-1 * * * *", "range '5-1' runs backwards"),
        ("x * * * *", "minute: 'x' is not a number"),
        ("* * * foo *", "month: 'foo' is not a number or a name"),
        ("0 0 30 feb *", "never fires"),
    ],
)
def test_a_bad_expression_says_which_field(expression: str, message: str) -> None:
    with pytest.raises(CronError) as error:
        parse(expression)
    assert message in str(error.value)


def test_a_naive_moment_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse("* * * * *").next_after(datetime(2026, 1, 1))
