"""The coordinator service's decision to start a round (policy.py), with no
I/O: schedule, daily times, the drift trigger over distinct sites, the
minimum interval and the daily cap.

Checked that these can fail, by edits run and reverted: counting alarms
instead of distinct sites (`len(alarms)`) fails the duplicate test; dropping
`max(starts)` from `alarmed_sites` fails the consumed-alarms test; dropping
the max_rounds_per_day branch fails the cap tests; taking `service_started`
as the anchor always fails the every_s-after-a-round test.
"""
from __future__ import annotations

import math
import re

import pytest

from runtime.config import ConfigError, CoordinatorConfig, parse_config
from runtime.federation.policy import (
    DAY_S,
    MAX_TRIGGER_SIGNALS,
    Alarm,
    alarmed_sites,
    decide,
)
from runtime.federation.release import RoundTrigger

T0 = 1_800_000_000.0 - (1_800_000_000.0 % DAY_S)     # a UTC midnight
OFF = CoordinatorConfig(min_interval_s=0.0)


def test_nothing_configured_never_starts() -> None:
    d = decide(OFF, T0 + 5, [], [Alarm("a", T0)], service_started=T0)
    assert not d.start and d.reason == "no round is due" and d.wake_at == math.inf


def test_every_s_counts_from_the_service_start_then_from_the_last_round() -> None:
    p = CoordinatorConfig(every_s=600.0, min_interval_s=0.0)
    early = decide(p, T0 + 599, [], [], service_started=T0)
    assert not early.start and early.wake_at == T0 + 600
    due = decide(p, T0 + 600, [], [], service_started=T0)
    assert due.start and due.reason.startswith("schedule (every 600 s)")
    # after a round at T0+600, the next is due at T0+1200, not before
    later = decide(p, T0 + 1100, [T0 + 600], [], service_started=T0)
    assert not later.start and later.wake_at == T0 + 1200
    assert decide(p, T0 + 1200, [T0 + 600], [], service_started=T0).start


def test_daily_times_and_a_missed_one_runs_once_late() -> None:
    p = CoordinatorConfig(daily_at=("02:00",), min_interval_s=0.0)
    # started at 03:00: today's 02:00 is before the service; wait for tomorrow's
    d = decide(p, T0 + 3 * 3600, [], [], service_started=T0 + 3 * 3600 - 1)
    assert not d.start and d.wake_at == T0 + DAY_S + 2 * 3600
    # the last round ran yesterday at 02:00; the service was down at 02:00 today
    last = T0 - DAY_S + 2 * 3600
    late = decide(p, T0 + 5 * 3600, [last], [], service_started=T0)
    assert late.start and "daily at 02:00 UTC" in late.reason
    # once it ran (05:00), nothing more today
    assert not decide(p, T0 + 6 * 3600, [last, T0 + 5 * 3600], [], service_started=T0).start


def test_drift_trigger_counts_distinct_sites_within_the_window() -> None:
    p = CoordinatorConfig(trigger_sites=2, trigger_window_s=600.0, min_interval_s=0.0)
    now = T0 + 10_000
    twice = [Alarm("a", now - 10), Alarm("a", now - 5)]      # a duplicate or replay
    assert not decide(p, now, [], twice, service_started=T0).start
    assert alarmed_sites(p, now, [], twice) == {"a"}
    two = [*twice, Alarm("b", now - 1)]
    d = decide(p, now, [], two, service_started=T0)
    assert d.start and d.reason.startswith("drift: 2 sites alarmed") and "a, b" in d.reason
    # one of them outside the window does not count
    old = [Alarm("a", now - 601), Alarm("b", now - 1)]
    assert not decide(p, now, [], old, service_started=T0).start


def test_alarms_before_the_last_round_are_consumed() -> None:
    p = CoordinatorConfig(trigger_sites=2, trigger_window_s=3600.0, min_interval_s=0.0)
    now = T0 + 10_000
    alarms = [Alarm("a", now - 100), Alarm("b", now - 90)]
    assert decide(p, now, [], alarms, service_started=T0).start
    # a round started at now-50 (the one these alarms triggered): not again
    assert not decide(p, now, [now - 50], alarms, service_started=T0).start
    # new alarms after it do trigger the next
    fresh = [*alarms, Alarm("a", now - 10), Alarm("c", now - 5)]
    assert decide(p, now, [now - 50], fresh, service_started=T0).start


def test_min_interval_holds_a_due_round_back_until_it_passes() -> None:
    p = CoordinatorConfig(trigger_sites=1, min_interval_s=3600.0)
    now = T0 + 10_000
    d = decide(p, now, [now - 600], [Alarm("a", now - 1)], service_started=T0)
    assert not d.start and "min_interval_s" in d.reason and d.wake_at == now - 600 + 3600
    assert decide(p, d.wake_at, [now - 600], [Alarm("a", now - 1)], service_started=T0).start


def test_max_rounds_per_day_is_any_24_hours_and_counts_failed_starts() -> None:
    p = CoordinatorConfig(every_s=60.0, min_interval_s=0.0, max_rounds_per_day=2)
    now = T0 + DAY_S + 1000
    starts = [now - DAY_S + 10, now - 500]       # both within the last 24 hours
    d = decide(p, now, starts, [], service_started=T0)
    assert not d.start and "max_rounds_per_day (2" in d.reason
    assert d.wake_at == starts[0] + DAY_S         # when the older one leaves the window
    assert decide(p, d.wake_at, starts, [], service_started=T0).start
    # the limit at 0 means none
    unlimited = CoordinatorConfig(every_s=60.0, min_interval_s=0.0)
    assert decide(unlimited, now, [now - i * 60 for i in range(1, 50)], [],
                  service_started=T0).start


def test_the_later_of_two_limits_decides_when_to_ask_again() -> None:
    p = CoordinatorConfig(every_s=1.0, min_interval_s=7200.0, max_rounds_per_day=1)
    now = T0 + DAY_S
    d = decide(p, now, [now - 60], [], service_started=T0)
    assert not d.start and d.wake_at == now - 60 + DAY_S and "max_rounds_per_day" in d.reason


@pytest.mark.parametrize("table,message", [
    ({"evry_s": 5}, "coordinator.evry_s: unknown key (did you mean 'every_s'?)"),
    ({"daily_at": ["24:00"]}, "coordinator.daily_at: must be a list"),
    ({"daily_at": ["02:00", "02:00"]}, "coordinator.daily_at: must be a list"),
    ({"trigger_sites": -1}, "coordinator.trigger_sites: must be an integer"),
    ({"trigger_window_s": 0}, "coordinator.trigger_window_s: must be a finite number > 0"),
    ({"report_max_age_s": math.inf}, "coordinator.report_max_age_s: must be a finite"),
    ({"min_interval_s": -5}, "coordinator.min_interval_s: must be a number >= 0"),
    ({"max_rounds_per_day": 1.5}, "coordinator.max_rounds_per_day: must be an integer"),
])
def test_config_is_checked(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"coordinator": table})


def test_config_defaults_and_a_full_table() -> None:
    assert parse_config({}).coordinator == CoordinatorConfig()
    c = parse_config({"coordinator": {
        "every_s": 3600, "daily_at": ["23:30", "02:00"], "trigger_sites": 3,
        "trigger_window_s": 1800, "min_interval_s": 600, "max_rounds_per_day": 6,
        "report_max_age_s": 7200}}).coordinator
    assert c == CoordinatorConfig(every_s=3600.0, daily_at=("02:00", "23:30"), trigger_sites=3,
                                  trigger_window_s=1800.0, min_interval_s=600.0,
                                  max_rounds_per_day=6, report_max_age_s=7200.0)


def test_the_decision_names_its_trigger_for_the_release() -> None:
    """The round's release manifest says why it started: the schedule, a
    daily time, or the drift trigger with the alarmed sites (counted
    alarms only) and each signal's smallest p-value.  Checked that it can
    fail: with `why.append(RoundTrigger("daily"))` removed, the daily
    decision has no trigger to name (IndexError); with drift_trigger
    taking every alarm instead of the counted ones, site "old" appears;
    without the is_name filter, the malformed signal name reaches the
    manifest (which every site would then refuse)."""
    every = decide(CoordinatorConfig(every_s=600.0, min_interval_s=0.0), T0 + 600, [], [],
                   service_started=T0)
    assert every.start and every.trigger == RoundTrigger("schedule")
    daily = decide(CoordinatorConfig(daily_at=("02:00",), min_interval_s=0.0),
                   T0 + 3 * 3600, [T0 - DAY_S], [], service_started=T0)
    assert daily.start and daily.trigger == RoundTrigger("daily")
    p = CoordinatorConfig(trigger_sites=2, trigger_window_s=600.0, min_interval_s=0.0)
    now = T0 + 10_000
    alarms = [Alarm("old", now - 700, {"prompt_nll": 1e-9}),
              Alarm("b", now - 5, {"prompt_nll": 0.002, "first_token_entropy": 0.4}),
              Alarm("a", now - 3, {"prompt_nll": 0.0001, "not a name!": 0.0}),
              Alarm("b", now - 1, {"prompt_nll": 0.03})]
    d = decide(p, now, [], alarms, service_started=T0)
    assert d.start and d.trigger == RoundTrigger(
        "drift", ("a", "b"), {"prompt_nll": 0.0001, "first_token_entropy": 0.4})
    # a due round held back still says what made it due; nothing due: no trigger
    held = decide(CoordinatorConfig(trigger_sites=2, trigger_window_s=600.0,
                                    min_interval_s=3600.0), now, [now - 60],
                  [Alarm("a", now - 3), Alarm("b", now - 2)], service_started=T0)
    assert not held.start and held.trigger is not None and held.trigger.kind == "drift"
    assert decide(OFF, now, [], [], service_started=T0).trigger is None
    # many signals from one site: the manifest carries the smallest few
    flood = {f"s{i}": i / 1000 for i in range(100)}
    big = decide(CoordinatorConfig(trigger_sites=1, min_interval_s=0.0), now, [],
                 [Alarm("a", now - 1, flood)], service_started=T0)
    assert big.trigger is not None and sorted(big.trigger.signals) == sorted(
        f"s{i}" for i in range(MAX_TRIGGER_SIGNALS))


def test_a_scheduled_round_waits_for_most_sites_windows_within_the_bound() -> None:
    """Sites a and b told their windows (open 22:00-06:00, as a deferral
    does), c told none (counts as inside): a round due at 12:00 waits for
    22:00, when all three are inside; with a bound of 4 h it may not wait
    that long and starts at once; a drift-triggered round never waits;
    once 22:00 comes it starts.  Fails with the `drift` condition dropped
    (tried: the drift round waits too)."""
    night = [(T0 + 22 * 3600, T0 + 30 * 3600)]
    windows = {"a": night, "b": night}
    sites = ["a", "b", "c"]
    p = CoordinatorConfig(daily_at=("12:00",), min_interval_s=0.0, window_max_delay_s=36000.0)
    noon = T0 + 12 * 3600
    d = decide(p, noon, [], [], T0, sites, windows)
    assert not d.start and d.wake_at == T0 + 22 * 3600
    assert "training windows until" in d.reason and "3 of 3 sites inside then, 1 now" in d.reason
    assert decide(p, T0 + 22 * 3600, [], [], T0, sites, windows).start
    short = CoordinatorConfig(daily_at=("12:00",), min_interval_s=0.0, window_max_delay_s=14400.0)
    assert decide(short, noon, [], [], T0, sites, windows).start
    assert decide(CoordinatorConfig(daily_at=("12:00",), min_interval_s=0.0), noon, [], [], T0,
                  sites, windows).start                          # 0: never waits
    drift = CoordinatorConfig(trigger_sites=1, min_interval_s=0.0, window_max_delay_s=36000.0)
    assert decide(drift, noon, [], [Alarm("a", noon - 5)], T0, sites, windows).start
    # windows that have all closed are stale: no wait
    assert decide(p, noon, [], [], T0, sites, {"a": [(T0, T0 + 3600)]}).start


def test_best_start_prefers_the_earliest_time_with_the_most_sites_inside() -> None:
    from runtime.federation.policy import best_start, sites_inside

    w = {"a": [(100.0, 200.0)], "b": [(150.0, 300.0)], "c": [(400.0, 500.0)]}
    assert sites_inside(160.0, ["a", "b", "c"], w) == 2
    assert best_start(0.0, 1000.0, ["a", "b", "c"], w) == 150.0
    assert best_start(0.0, 120.0, ["a", "b", "c"], w) == 100.0
    assert best_start(0.0, 50.0, ["a", "b", "c"], w) == 0.0
    # a tie: the earliest (fails with `-t` dropped from the key: tried, 300)
    assert best_start(0.0, 1000.0, ["a", "b"], {"a": [(100.0, 200.0)],
                                                "b": [(300.0, 400.0)]}) == 100.0
