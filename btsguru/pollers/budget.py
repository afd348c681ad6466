"""Each sport's budget plan: how far the pollers' cadences must stretch to last the day.

Where it sits: between the quota governor (how much is left today) and the tasks (how
often they would like to run). Every `PLAN_TTL_S` it reads the governor's snapshot and
the schedule book, estimates what the sport's pollers would spend until 00:00 UTC at
their desired cadence (`cadence.estimate_demand`), and asks `cadence.plan_stretch` for
the factors. All the tasks of a sport in this process share one plan.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from redis.exceptions import RedisError

from btsguru.clock import Clock
from btsguru.pollers.book import ScheduleBook, leagues_of_interest, unfinished_starts
from btsguru.pollers.cadence import (
    CadenceSettings,
    Kind,
    PollShape,
    budget_for_pollers,
    day_outlook,
    estimate_demand,
    plan_stretch,
)
from btsguru.upstream.quota import QuotaGovernor

log = logging.getLogger(__name__)

# The plan is cheap (two Redis reads) but changes slowly: once a minute is plenty, and
# a minute of overspending at the desired cadence is a rounding error of a day's budget.
PLAN_TTL_S = 60.0


@dataclass(frozen=True)
class BudgetPlan:
    stretch: Mapping[Kind, float]
    budget: float  # requests the pollers may still spend today
    demand: float  # what they would spend at their desired cadence
    planned_at: float

    def factor(self, kind: Kind) -> float:
        return self.stretch.get(kind, 1.0)

    def describe(self) -> str:
        stretched = [f"{k.value} x{v:.1f}" for k, v in self.stretch.items() if v > 1.0]
        return ", ".join(stretched) or "none"


UNSTRETCHED = BudgetPlan(stretch=dict.fromkeys(Kind, 1.0), budget=0.0, demand=0.0,
                         planned_at=float("-inf"))


class SportBudget:
    def __init__(self, sport: str, shape: PollShape, quota: QuotaGovernor, book: ScheduleBook,
                 settings: CadenceSettings, clock: Clock) -> None:
        self.sport = sport
        self.shape = shape
        self._quota = quota
        self._book = book
        self._settings = settings
        self._clock = clock
        self._plan = UNSTRETCHED

    @property
    def plan(self) -> BudgetPlan:
        """The last plan (unstretched before the first)."""
        return self._plan

    async def current(self) -> BudgetPlan:
        """The plan, recomputed when older than `PLAN_TTL_S`; the last one if Redis fails."""
        now = self._clock.time()
        if now - self._plan.planned_at < PLAN_TTL_S:
            return self._plan
        try:
            snapshot = await self._quota.snapshot(self.sport)
            entries = await self._book.entries(self.sport)
        except (RedisError, OSError) as exc:
            log.warning("%s budget: cannot read the quota or schedule (%s); keeping the "
                        "last plan", self.sport, exc)
            return self._plan
        leagues = leagues_of_interest(entries)
        outlook = day_outlook(self.sport, unfinished_starts(entries, now), now,
                              leagues=len(leagues), live_leagues=sum(leagues.values()))
        demand = estimate_demand(self.sport, outlook, self.shape, self._settings)
        budget = budget_for_pollers(snapshot.day_limit, snapshot.day_remaining, now,
                                    self._settings.budget_share)
        plan = BudgetPlan(stretch=plan_stretch(demand, budget), budget=budget,
                          demand=sum(demand.values()), planned_at=now)
        if plan.describe() != self._plan.describe():
            log.info("%s budget: %.0f requests for the pollers until 00:00 UTC, %.0f wanted "
                     "(%.1f live hours ahead); stretching: %s", self.sport, budget,
                     plan.demand, outlook.live_seconds / 3600, plan.describe())
        self._plan = plan
        return plan
