"""Cadence decisions: table-driven, on an injected clock's `now`, no I/O."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from btsguru.backoff import Backoff
from btsguru.config import load_config
from btsguru.errors import Unavailable
from btsguru.pollers.cadence import (
    DAY_S,
    MAX_STRETCH,
    STRETCH_ORDER,
    CadenceSettings,
    DayOutlook,
    Kind,
    PollShape,
    budget_for_pollers,
    crucial_reason,
    delay_after_failure,
    estimate_demand,
    expected_live_seconds,
    is_host_failure,
    live_decision,
    plan_stretch,
    seconds_left_in_day,
    standings_interval_s,
)
from btsguru.sports.base import Phase
from btsguru.upstream.errors import (
    CircuitOpen,
    QuotaExhausted,
    UpstreamAuthError,
    UpstreamFailure,
    UpstreamRequestError,
)
from tests.store_fixtures import make_game

NOON = 1_723_809_600.0  # 2024-08-16T12:00:00Z
SETTINGS = CadenceSettings.from_config(load_config(environ={}, env_file=None))


def game(sport="football", code="1H", phase=Phase.LIVE, clock=None, home=0, away=0,
         period=None, game_id=1):
    return make_game(game_id, sport=sport, phase=phase, code=code, clock=clock, home=home,
                     away=away, period=period)


# -- settings --------------------------------------------------------------------------

def test_defaults_are_the_upstreams_recommended_ranges():
    live = SETTINGS.live
    assert 5 <= live["basketball"].crucial_s <= live["basketball"].live_s <= 10
    for sport in ("football", "hockey", "american-football"):
        assert 10 <= live[sport].crucial_s <= live[sport].live_s <= 15
    assert 30 <= live["baseball"].crucial_s <= live["baseball"].live_s <= 60
    assert 15 * 60 <= SETTINGS.idle_s <= 30 * 60
    assert SETTINGS.budget_share == 0.8


def test_settings_come_from_the_environment():
    config = load_config(environ={"POLL_LIVE_INTERVAL_BASEBALL_S": "50",
                                  "POLL_CRUCIAL_INTERVAL_BASEBALL_S": "70",
                                  "POLL_IDLE_INTERVAL_S": "1200",
                                  "POLL_BUDGET_SHARE_PERCENT": "60"}, env_file=None)
    settings = CadenceSettings.from_config(config)
    assert settings.live["baseball"].live_s == 50
    assert settings.live["baseball"].crucial_s == 50  # never slower than the live cadence
    assert settings.idle_s == 1200 and settings.budget_share == 0.6


# -- crucial moments ---------------------------------------------------------------------

@pytest.mark.parametrize(("sport", "code", "clock", "home", "away", "period", "reason"), [
    ("football", "1H", "30", 0, 0, 1, None),
    ("football", "2H", "60", 0, 0, 2, None),
    ("football", "2H", "72", 2, 1, 2, "close score late"),
    ("football", "2H", "72", 3, 0, 2, None),
    ("football", "2H", "87", 3, 0, 2, "last minutes"),
    ("football", "2H", "90+3", 4, 0, 2, "last minutes"),
    ("football", "ET", "95", 1, 1, 3, "extra time"),
    ("football", "P", "120", 1, 1, 4, "penalty shoot-out"),
    ("basketball", "Q2", "9", 40, 41, 2, None),
    ("basketball", "Q4", "3", 70, 90, 4, None),
    ("basketball", "Q4", "3", 88, 90, 4, "close score late"),
    ("basketball", "Q4", "10", 70, 90, 4, "last minutes"),
    ("basketball", "OT", "2", 99, 99, 5, "overtime"),
    ("hockey", "P2", "P2 18", 1, 1, 2, None),
    ("hockey", "P3", "P3 05", 1, 4, 3, None),
    ("hockey", "P3", "P3 05", 2, 3, 3, "close score late"),
    ("hockey", "P3", "P3 17", 1, 4, 3, "last minutes"),
    ("hockey", "OT", "OT 02", 2, 2, 4, "overtime"),
    ("hockey", "PT", None, 2, 2, 5, "shoot-out"),
    ("baseball", "IN5", None, 2, 2, 5, None),
    ("baseball", "IN7", None, 4, 3, 7, "close score late"),
    ("baseball", "IN7", None, 8, 3, 7, None),
    ("baseball", "IN9", None, 8, 3, 9, "last innings"),
    ("american-football", "Q2", "09:00", 7, 7, 2, None),
    ("american-football", "Q2", "01:30", 7, 21, 2, "two-minute warning"),
    ("american-football", "Q4", "11:00", 14, 21, 4, "one-score game late"),
    ("american-football", "Q4", "11:00", 3, 31, 4, None),
    ("american-football", "OT", "08:00", 24, 24, 5, "overtime"),
])
def test_crucial_moments(sport, code, clock, home, away, period, reason):
    assert crucial_reason(game(sport, code, clock=clock, home=home, away=away,
                               period=period)) == reason


def test_a_break_is_never_crucial():
    half_time = game("football", "HT", phase=Phase.BREAK, clock="45", home=1, away=1)
    assert crucial_reason(half_time) is None


# -- the live interval -------------------------------------------------------------------

@pytest.mark.parametrize(("sport", "games", "next_start", "interval", "why"), [
    # in play: the sport's cadence; crucial: faster
    ("football", [game(clock="30")], None, 15, "1 in play"),
    ("football", [game(clock="30"), game(code="2H", clock="88", game_id=2)], None, 10,
     "crucial: last minutes (2)"),
    ("basketball", [game("basketball", "Q1", clock="5")], None, 8, "1 in play"),
    ("basketball", [game("basketball", "OT", clock="1")], None, 5, "crucial: overtime (1)"),
    ("baseball", [game("baseball", "IN3", period=3)], None, 45, "1 in play"),
    # nothing in play: idle, but awake before the next start
    ("football", [], None, 900, "idle, nothing scheduled"),
    ("football", [game(code="FT", phase=Phase.FINISHED)], NOON + 4 * 3600, 900, "idle"),
    ("football", [], NOON + 600, 480, "idle until the next start"),  # 600 - 120 s lead
    ("football", [], NOON + 130, 15, "a game starts soon"),
    ("hockey", [], NOON - 60, 15, "a game starts soon"),  # late start: keep looking
])
def test_live_interval(sport, games, next_start, interval, why):
    decision = live_decision(sport, games, NOON, next_start, SETTINGS)
    assert (decision.interval_s, decision.reason) == (interval, why)


def test_live_interval_stretches_up_to_the_idle_cadence_only():
    in_play = [game(clock="30")]
    assert live_decision("football", in_play, NOON, None, SETTINGS, 2.0).interval_s == 30
    assert live_decision("football", in_play, NOON, None, SETTINGS, 500.0).interval_s == 900
    assert live_decision("football", in_play, NOON, None, SETTINGS, math.inf).interval_s == 900
    # an idle poller is never woken more often than a stretched live one would poll
    assert live_decision("football", [], NOON, NOON + 300, SETTINGS, 20.0).interval_s == 300


@pytest.mark.parametrize(("live", "stretch", "interval"), [
    (True, 1.0, 3600), (False, 1.0, 86400), (True, 3.0, 10800)])
def test_standings_hourly_while_live_else_daily(live, stretch, interval):
    assert standings_interval_s(live, SETTINGS, stretch) == interval


# -- the budget ----------------------------------------------------------------------------

def test_seconds_left_in_the_utc_day():
    assert seconds_left_in_day(NOON) == DAY_S / 2
    assert seconds_left_in_day(NOON - 12 * 3600) == DAY_S


@pytest.mark.parametrize(("starts", "expected_h"), [
    ([], 0.0),
    ([NOON + 3600], 2.0),  # one game, 2 h
    ([NOON + 3600, NOON + 1800 + 3600], 2.5),  # overlapping: the union
    ([NOON + 3600, NOON + 6 * 3600], 4.0),  # apart: the sum
    ([NOON - 3600], 1.0),  # started an hour ago: one hour left
    ([NOON - 3 * 3600], 0.5),  # overdue: still expected for a quarter of a game
    ([NOON + 11 * 3600], 1.0),  # cut at midnight
])
def test_expected_live_hours(starts, expected_h):
    live_s = expected_live_seconds(starts, NOON, NOON + DAY_S / 2, 2 * 3600)
    assert live_s == pytest.approx(expected_h * 3600)


def test_budget_keeps_the_user_share_pro_rata():
    # 7500 a day, 80 % for the pollers: at noon, users keep 750 of what is left
    assert budget_for_pollers(7500, 5000, NOON, 0.8) == pytest.approx(4250)
    assert budget_for_pollers(7500, 600, NOON, 0.8) == 0.0
    assert budget_for_pollers(100, 100, NOON - 12 * 3600, 1.0) == 100


def _demand(**kinds):
    return {kind: float(kinds.get(kind.value, 0.0)) for kind in Kind}


@pytest.mark.parametrize(("demand", "budget", "expected"), [
    # it fits: nothing stretches
    (_demand(live=1000, details=100, schedule=50, standings=20, static=10), 2000,
     {}),
    # a small deficit is taken from static data alone
    (_demand(live=1000, schedule=50, static=80), 1100, {"static": 80 / 50}),
    # static at its cap (saves 70), then standings, then the schedule
    (_demand(live=1000, schedule=100, standings=40, static=80), 1100,
     {"static": 8.0, "standings": 8.0, "schedule": 100 / 85}),
    # everything else at its cap, then live gives way last
    (_demand(live=1000, details=200, schedule=100, standings=40, static=80), 800,
     {"static": 8.0, "standings": 8.0, "schedule": 4.0, "details": 4.0,
      "live": 1000 / (1000 - (1420 - 800 - 70 - 35 - 75 - 150))}),
    # no budget at all: live stops being planned
    (_demand(live=1000, static=8), 0, {"static": 8.0, "live": math.inf}),
])
def test_stretch_order(demand, budget, expected):
    stretch = plan_stretch(demand, budget)
    want = {kind: expected.get(kind.value, 1.0) for kind in Kind}
    assert stretch == pytest.approx(want)
    stretched_demand = sum(demand[k] / stretch[k] for k in Kind if stretch[k] != math.inf)
    if budget > 0:
        assert stretched_demand == pytest.approx(min(budget, sum(demand.values())))


def test_stretch_order_is_static_first_live_last():
    assert STRETCH_ORDER[0] is Kind.STATIC and STRETCH_ORDER[-1] is Kind.LIVE
    assert STRETCH_ORDER.index(Kind.SCHEDULE) < STRETCH_ORDER.index(Kind.DETAILS)
    assert Kind.LIVE not in MAX_STRETCH


def test_demand_grows_with_live_hours_and_games():
    shape = PollShape(live_calls=1, schedule_calls=3, details_per_game_s=1 / 40,
                      details_per_finish=1)
    quiet = DayOutlook(seconds_left=DAY_S / 2, live_seconds=0, game_seconds=0, games_left=0,
                       leagues=2, live_leagues=0)
    busy = replace(quiet, live_seconds=6 * 3600, game_seconds=30 * 3600, games_left=20,
                   live_leagues=2)
    a = estimate_demand("football", quiet, shape, SETTINGS)
    b = estimate_demand("football", busy, shape, SETTINGS)
    assert a[Kind.LIVE] == pytest.approx(12 * 3600 / 900)  # idle all afternoon: 48
    assert b[Kind.LIVE] == pytest.approx(6 * 3600 / 15 + 6 * 3600 / 900 + 20)
    assert b[Kind.DETAILS] == pytest.approx(30 * 3600 / 40 + 20)
    assert a[Kind.SCHEDULE] == b[Kind.SCHEDULE] == pytest.approx(3 * 12 * 4)
    assert b[Kind.STANDINGS] > a[Kind.STANDINGS]
    # a free plan (100 a day) cannot carry a busy afternoon of 15 s polls: live stretches
    budget = budget_for_pollers(100, 60, NOON, 0.8)
    stretch = plan_stretch(b, budget)
    assert stretch[Kind.LIVE] > 1 and stretch[Kind.STATIC] == MAX_STRETCH[Kind.STATIC]


# -- failures ------------------------------------------------------------------------------

class Fixed:
    def __init__(self, value):
        self.value = value

    def __call__(self):
        return self.value


# A failure that is not the upstream host's: Redis or the database away, a refused key.
NOT_THE_HOST = [Unavailable("Redis is unreachable"),
                UpstreamAuthError("football /fixtures: key refused", kind="auth",
                                  transient=False),
                RuntimeError("a bug")]


@pytest.mark.parametrize("error", NOT_THE_HOST, ids=["redis", "auth", "bug"])
@pytest.mark.parametrize(("failures", "ceiling"), [(1, 5), (2, 10), (3, 20), (6, 160),
                                                   (7, 300), (40, 300)])
def test_backoff_doubles_to_its_cap_with_jitter(error, failures, ceiling):
    top = Backoff(5, 300, random_source=Fixed(0.999999))
    bottom = Backoff(5, 300, random_source=Fixed(0.0))
    assert delay_after_failure(error, 15, failures, top) == pytest.approx(15 + ceiling, abs=1e-3)
    assert delay_after_failure(error, 15, failures, bottom) == 15


def test_backoff_jitter_spreads():
    backoff = SETTINGS.backoff()
    error = Unavailable("Redis is unreachable")
    delays = {round(delay_after_failure(error, 15, 4, backoff), 3) for _ in range(50)}
    assert len(delays) > 40 and all(15 <= d <= 15 + 40 for d in delays)


HOST_FAILURES = [UpstreamFailure(f"football /fixtures: {kind}", kind=kind, transient=True)
                 for kind in ("timeout", "connection", "server", "malformed", "upstream_bug")]


@pytest.mark.parametrize("error", [*HOST_FAILURES, CircuitOpen("a probe is out",
                                                               retry_after_s=1)],
                         ids=lambda e: e.kind)
@pytest.mark.parametrize("failures", [1, 2, 7, 40])
def test_after_a_host_failure_the_retry_is_exactly_one_cadence(error, failures):
    """Never sooner (no more asks than healthy), never later (fresh within one cadence
    of the host's return), whatever the backoff settings and however long it failed."""
    top = Backoff(5, 300, random_source=Fixed(0.999999))
    assert is_host_failure(error)
    assert delay_after_failure(error, 15, failures, top) == 15
    assert delay_after_failure(error, 2, failures, top) == 2


def test_a_budget_wall_waits_as_long_as_it_says():
    backoff = Backoff(5, 300, random_source=Fixed(0.5))
    day = QuotaExhausted("spent", window="day", source="local", retry_after_s=7200)
    minute = QuotaExhausted("wait", window="minute", source="upstream", retry_after_s=40)
    assert not is_host_failure(day) and not is_host_failure(minute)
    assert delay_after_failure(day, 15, 1, backoff) == 7200
    assert delay_after_failure(minute, 15, 3, backoff) == 40
    # a window that clears before the next run is no reason to ask sooner
    assert delay_after_failure(minute, 60, 3, backoff) == 60
    # the host answered a refusal (a request error) is not the host failing
    refused = UpstreamRequestError("football /standings: plan", kind="request",
                                   transient=False)
    assert not is_host_failure(refused)
    assert delay_after_failure(refused, 15, 1, backoff) == 15 + 2.5
