"""When the coordinator service starts a round, with no I/O: given the time,
the starts of the rounds so far and the drift alarms it accepted, start one
now or not, why, and when to ask again.

A round is *due* when

* the period has passed: `every_s` since the last round started (or since
  the service first started, before any round);
* a daily time ("HH:MM", UTC) has passed since the last round started (a
  time missed while the service was down runs once, late);
* or the drift trigger fires: at least `trigger_sites` distinct sites raised
  an alarm within the last `trigger_window_s` seconds, counting only alarms
  raised after the last round started (those before it were about the
  adapter that round replaced).  A site that reports twice counts once.

A due round still waits for `min_interval_s` since the last start, and for
`max_rounds_per_day` (starts in any 24 hours).  Every start counts, failed
rounds too, so that a round that keeps failing does not run in a loop.
Times are Unix seconds; alarms carry the site's clock (the coordinator
refused those from the future beyond reports.CLOCK_SKEW_S).

A decision also says which trigger made the round due (`RoundTrigger`, the
first of the reasons), for the round's release manifest: "schedule",
"daily", or "drift" with the alarmed sites and their signals.
A round due by the *schedule* may then wait for the sites' training windows
(`window_max_delay_s` > 0; docs/energy.md, "Carbon-aware training
windows"): sites that deferred a round told the coordinator when their
windows are open (online.GrpcExchange.site_windows), and the round starts
at the earliest time, no later than `window_max_delay_s` after it became
due, at which the most sites are inside theirs (`best_start`; a site whose
windows are unknown counts as inside).  A round due by the *drift trigger*
never waits: the adapter is doing worse on live traffic now, and a few
hours of greener power do not pay for that.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from runtime.config import CoordinatorConfig
from runtime.federation.release import RoundTrigger
from runtime.names import is_name

DAY_S = 86400.0
# A drift trigger names at most this many signals (the smallest p-values):
# what one site reported must not bloat the manifest every site reads.
MAX_TRIGGER_SIGNALS = 16


@dataclass(frozen=True)
class Alarm:
    site: str
    raised_at: float
    p_values: Mapping[str, float] = field(default_factory=dict)   # signal -> p-value


@dataclass(frozen=True)
class Decision:
    start: bool
    reason: str                     # why (or why not), for the log and the audit
    wake_at: float                  # when to decide again, absent new alarms (inf: never)
    trigger: RoundTrigger | None = None     # what made the round due (None: nothing)


def _daily_slot_before(now: float, hhmm: str) -> float:
    """The latest time of day `hhmm` (UTC) at or before `now`."""
    hours, minutes = (int(x) for x in hhmm.split(":"))
    offset = hours * 3600.0 + minutes * 60.0
    midnight = math.floor(now / DAY_S) * DAY_S
    slot = midnight + offset
    return slot if slot <= now else slot - DAY_S


def _limit_lifts_at(policy: CoordinatorConfig, now: float, starts: Sequence[float]
                    ) -> tuple[float, str]:
    """When min_interval_s and max_rounds_per_day let the next round start
    (<= now: they let it now), and which one holds it back."""
    at, why = -math.inf, ""
    if starts:
        after_interval = max(starts) + policy.min_interval_s
        if after_interval > now:
            at, why = after_interval, f"min_interval_s ({policy.min_interval_s:g} s)"
    if policy.max_rounds_per_day:
        recent = sorted(s for s in starts if now - s < DAY_S)
        if len(recent) >= policy.max_rounds_per_day:
            # the oldest start that must leave the 24 hours for one more to fit
            frees = recent[len(recent) - policy.max_rounds_per_day] + DAY_S
            if frees > at:
                at, why = frees, (f"max_rounds_per_day ({policy.max_rounds_per_day} in the "
                                  "last 24 hours)")
    return at, why


def counted_alarms(policy: CoordinatorConfig, now: float, starts: Sequence[float],
                   alarms: Sequence[Alarm]) -> list[Alarm]:
    """The alarms that count toward the trigger now."""
    since = max(now - policy.trigger_window_s, max(starts, default=-math.inf))
    return [a for a in alarms if a.raised_at > since]


def alarmed_sites(policy: CoordinatorConfig, now: float, starts: Sequence[float],
                  alarms: Sequence[Alarm]) -> set[str]:
    """Distinct sites whose alarm counts toward the trigger now."""
    return {a.site for a in counted_alarms(policy, now, starts, alarms)}


def drift_trigger(counted: Sequence[Alarm]) -> RoundTrigger:
    """The drift trigger of these alarms: their sites, and per signal the
    smallest p-value any of them reported.  A signal whose name the
    manifest could not carry is left out, so that one site's report
    cannot make the release unreadable to every site."""
    signals: dict[str, float] = {}
    for a in counted:
        for name, p in a.p_values.items():
            if is_name(name) and 0.0 <= p <= 1.0:
                signals[name] = min(p, signals.get(name, p))
    kept = sorted(signals.items(), key=lambda kv: (kv[1], kv[0]))[:MAX_TRIGGER_SIGNALS]
    return RoundTrigger("drift", tuple(sorted({a.site for a in counted})), dict(kept))


Windows = Mapping[str, Sequence[tuple[float, float]]]     # site -> [(opens, closes)]


def sites_inside(t: float, sites: Sequence[str], windows: Windows) -> int:
    """How many of `sites` are inside their training windows at `t`; a site
    with no windows known counts as inside."""
    return sum(1 for s in sites
               if not windows.get(s) or any(a <= t < b for a, b in windows[s]))


def best_start(now: float, latest: float, sites: Sequence[str], windows: Windows) -> float:
    """The earliest time in [now, latest] at which the most sites are inside
    their windows.  Windows that have all closed by `now` are stale (the
    site told them long ago) and count as unknown."""
    known = {s: w for s, w in windows.items() if w and max(b for _, b in w) > now}
    candidates = [now] + sorted(a for w in known.values() for a, _ in w if now < a <= latest)
    return max(candidates, key=lambda t: (sites_inside(t, sites, known), -t))


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def decide(policy: CoordinatorConfig, now: float, starts: Sequence[float],
           alarms: Sequence[Alarm], service_started: float,
           sites: Sequence[str] = (), windows: Windows | None = None) -> Decision:
    """Start a round now?  `starts`: when each earlier round started;
    `alarms`: the accepted drift alarms (rollback reports are not alarms);
    `service_started`: when the service first ran, the schedule's origin
    before any round; `sites`, `windows`: the enrolled sites and the
    training windows known of them (a scheduled round waits for them,
    within `window_max_delay_s`)."""
    anchor = max(starts, default=service_started)
    due: list[str] = []
    why: list[RoundTrigger] = []        # due's triggers, in the same order
    due_since = math.inf                # when the schedule made it due
    wake = math.inf
    if policy.every_s > 0:
        at = anchor + policy.every_s
        if at <= now:
            due.append(f"schedule (every {policy.every_s:g} s)")
            why.append(RoundTrigger("schedule"))
            due_since = min(due_since, at)
        wake = min(wake, at)
    for hhmm in policy.daily_at:
        slot = _daily_slot_before(now, hhmm)
        if slot > anchor:
            due.append(f"schedule (daily at {hhmm} UTC)")
            why.append(RoundTrigger("daily"))
            due_since = min(due_since, slot)
        wake = min(wake, slot + DAY_S)
    drift = False
    if policy.trigger_sites:
        counted = counted_alarms(policy, now, starts, alarms)
        sites_alarmed = {a.site for a in counted}
        if len(sites_alarmed) >= policy.trigger_sites:
            drift = True
            due.append(f"drift: {len(sites_alarmed)} sites alarmed within "
                       f"{policy.trigger_window_s:g} s ({', '.join(sorted(sites_alarmed))})")
            why.append(drift_trigger(counted))
    if not due:
        return Decision(False, "no round is due", wake)
    lifts, held_by = _limit_lifts_at(policy, now, starts)
    if lifts > now:
        return Decision(False, f"{due[0]}, but held back by {held_by}", lifts, why[0])
    if not drift and policy.window_max_delay_s > 0 and windows:
        start = best_start(now, due_since + policy.window_max_delay_s, sites, windows)
        if start > now:
            return Decision(False, f"{due[0]}, waiting for the sites' training windows until "
                            f"{_utc(start)} ({sites_inside(start, sites, windows)} of "
                            f"{len(sites)} sites inside then, "
                            f"{sites_inside(now, sites, windows)} now)", start, why[0])
    return Decision(True, due[0], math.inf, why[0])
