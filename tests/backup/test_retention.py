"""Pure retention rules and schedule timing."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from kvmkit.backup import retention
from kvmkit.backup.retention import Item, RetentionPolicy
from kvmkit.errors import InvalidInput
from kvmkit.jobs import schedule

T0 = datetime(2026, 11, 2, 0, 30)  # a Monday


def hourly(n: int) -> list[Item]:
    return [Item(f"s{i:03d}", T0 + timedelta(hours=i)) for i in range(n)]


def test_keep_last_keeps_the_newest_n():
    kept = retention.keep(hourly(10), RetentionPolicy(keep_last=3))
    assert sorted(kept) == ["s007", "s008", "s009"]


def test_keep_daily_keeps_the_newest_of_each_day():
    items = hourly(72)  # three days from 00:30 Monday
    kept = retention.keep(items, RetentionPolicy(keep_daily=2))
    assert sorted(kept) == ["s047", "s071"]  # Tuesday's last (23:30) and Wednesday's last


def test_keep_weekly_uses_iso_weeks():
    items = [Item(f"d{i}", T0 + timedelta(days=i)) for i in range(21)]
    kept = retention.keep(items, RetentionPolicy(keep_weekly=2))
    assert sorted(kept) == ["d13", "d20"]  # the Sundays ending week 2 and week 3


def test_rules_combine_and_the_newest_is_always_kept():
    items = hourly(50)
    kept = retention.keep(items, RetentionPolicy(keep_last=2, keep_daily=3))
    assert {"s049", "s048", "s047", "s023"} <= set(kept)
    assert retention.keep(items, RetentionPolicy()) == {"s049": "newest"}
    assert retention.keep([], RetentionPolicy(keep_last=1)) == {}


def test_with_ancestors_keeps_the_chain_of_every_kept_incremental():
    items = [Item("a", T0), Item("b", T0 + timedelta(hours=1), "a"), Item("c", T0 + timedelta(hours=2), "b"),
             Item("x", T0 + timedelta(hours=3))]
    kept = retention.with_ancestors({"c": "last"}, items)
    assert set(kept) == {"a", "b", "c"}


def test_dependants_are_transitive_and_oldest_first():
    items = [Item("a", T0), Item("b", T0 + timedelta(hours=1), "a"), Item("c", T0 + timedelta(hours=2), "b"),
             Item("d", T0 + timedelta(hours=3), "a"), Item("e", T0 + timedelta(hours=4))]
    assert retention.dependants("a", items) == ["b", "c", "d"]
    assert retention.dependants("e", items) == []


def test_negative_keep_is_bad_input():
    with pytest.raises(InvalidInput, match="--keep-last"):
        RetentionPolicy(keep_last=-1)


def test_scheduled_names_carry_the_schedule_clock():
    assert retention.item_time("sched-20261102-013000", T0) == datetime(2026, 11, 2, 1, 30)
    assert retention.item_time("manual", T0) == T0
    assert retention.item_time("sched-garbage", T0) == T0


@pytest.mark.parametrize(("text", "seconds"), [("1m", 60), ("90m", 5400), ("1h", 3600), ("2d", 172800),
                                               ("1w", 604800)])
def test_parse_every(text, seconds):
    assert schedule.parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "0h", "30s", "1y", "-1h"])
def test_parse_every_rejects_nonsense(text):
    with pytest.raises(InvalidInput):
        schedule.parse_every(text)


def test_due_and_next_due():
    s = schedule.Schedule(vm="v", every_s=3600, keep_last=1)
    assert schedule.due(s, T0)
    s.last_run = T0
    assert not schedule.due(s, T0 + timedelta(minutes=59))
    assert schedule.due(s, T0 + timedelta(hours=1))
    assert schedule.next_due([s], T0) == T0 + timedelta(hours=1)
