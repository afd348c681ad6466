"""diff_games / apply_changes: the contract's events from two states of a game, and back.

Table-driven cases for the moments of a match, then properties over arbitrary games:
apply(a, diff(a, b)) == b up to a clock that ticked alone, and a snapshot plus the later
changes (numbered as the store numbers them) equals a fresh snapshot, wherever the
snapshot falls in the sequence (the race Zulip's event tests force on purpose).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from btsguru.diff import apply_changes, diff_games
from btsguru.sports.base import (
    Change,
    Game,
    GameEvent,
    League,
    Period,
    Phase,
    Status,
    Team,
    game_from_json,
    game_to_json,
)

PHASE_OF = {"NS": Phase.SCHEDULED, "1H": Phase.LIVE, "HT": Phase.BREAK, "2H": Phase.LIVE,
            "ET": Phase.LIVE, "BT": Phase.BREAK, "P": Phase.LIVE, "FT": Phase.FINISHED,
            "AET": Phase.FINISHED, "PEN": Phase.FINISHED, "PST": Phase.POSTPONED,
            "SUSP": Phase.INTERRUPTED}
PERIOD_OF = {"1H": 1, "HT": 1, "2H": 2, "ET": 3, "BT": 3, "P": 4}

GOAL = GameEvent("goal", "23", 33, "J. Zirkzee", "Normal Goal")
CARD = GameEvent("card", "30", 36, "A. Robinson", "Yellow Card")
VAR = GameEvent("var", "24", 33, "J. Zirkzee", "Goal cancelled")


def football(code="NS", home=None, away=None, *, clock=None, periods=(), events=(),
             start="2024-08-16T19:00:00Z", at="2024-08-16T19:00:00Z", detail=None, **kw):
    return Game(
        id=1035037, sport="football",
        league=League(39, "Premier League", "England", 2024),
        start_time=start,
        status=Status(PHASE_OF[code], code, detail or code, clock, PERIOD_OF.get(code), at),
        home=Team(33, "Manchester United", home), away=Team(36, "Fulham", away),
        periods=tuple(periods), events=tuple(events) if events is not None else None, **kw)


def kinds(changes):
    return [c.event for c in changes]


def assert_round_trip(old, new, *, exact_clock=None):
    changes = diff_games(old, new)
    applied = apply_changes(old, changes)
    if exact_clock is None:
        exact_clock = any(c.event in ("game.started", "game.status", "game.finished")
                          for c in changes)
    if exact_clock:
        assert applied == new
    else:
        assert without_clock(applied) == without_clock(new)
    return changes


def without_clock(game):
    return replace(game, status=replace(game.status, clock=None, server_time=None))


# --- the moments of a match ---------------------------------------------------------


def test_first_sighting_is_no_event_the_snapshot_covers_it():
    assert diff_games(None, football("2H", 1, 0, clock="67")) == []


def test_kick_off_is_one_started_event_carrying_status_scores_and_periods():
    old = football("NS")
    new = football("1H", 0, 0, clock="1", periods=[Period("1H", 0, 0)],
                   at="2024-08-16T19:00:40Z", detail="First Half")
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.started"]
    assert changes[0].changes == {
        "status.phase": "live", "status.code": "1H", "status.detail": "First Half",
        "status.clock": "1", "status.period": 1, "status.server_time": "2024-08-16T19:00:40Z",
        "home.score": 0, "away.score": 0, "periods": [{"name": "1H", "home": 0, "away": 0}]}
    assert (changes[0].sport, changes[0].league_id, changes[0].game_id, changes[0].seq) == (
        "football", 39, 1035037, 0)


def test_goal_is_a_score_change_then_one_event():
    old = football("1H", 0, 0, clock="22", periods=[Period("1H", 0, 0)], events=[CARD])
    new = football("1H", 1, 0, clock="23", periods=[Period("1H", 1, 0)], events=[CARD, GOAL],
                   at="2024-08-16T19:23:05Z")
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.score", "game.event"]
    assert changes[0].changes == {"home.score": 1, "away.score": 0,
                                  "periods": [{"name": "1H", "home": 1, "away": 0}]}
    assert changes[1].game_event == GOAL
    assert changes[1].to_json() == {
        "sport": "football", "league_id": 39, "game_id": 1035037, "seq": 0,
        "event": {"type": "goal", "clock": "23", "team_id": 33, "player": "J. Zirkzee",
                  "detail": "Normal Goal"}}


def test_half_time_is_a_status_change_with_the_clock_fields():
    old = football("1H", 1, 0, clock="45+2", periods=[Period("1H", 1, 0)], events=[GOAL])
    new = football("HT", 1, 0, clock="45", periods=[Period("1H", 1, 0)], events=[GOAL],
                   at="2024-08-16T19:48:00Z")
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.status"]
    assert changes[0].changes == {
        "status.phase": "break", "status.code": "HT", "status.detail": "HT",
        "status.clock": "45", "status.period": 1, "status.server_time": "2024-08-16T19:48:00Z"}


def test_second_half_is_a_status_change_and_the_new_period_an_update():
    old = football("HT", 1, 0, clock="45", periods=[Period("1H", 1, 0)])
    new = football("2H", 1, 0, clock="46", periods=[Period("1H", 1, 0), Period("2H", 0, 0)])
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.status", "game.updated"]
    assert changes[0].changes["status.phase"] == "live"
    assert changes[0].changes["status.period"] == 2
    assert changes[1].changes == {"periods": [{"name": "1H", "home": 1, "away": 0},
                                              {"name": "2H", "home": 0, "away": 0}]}


def test_full_time_carries_the_final_score():
    periods = [Period("1H", 1, 0), Period("2H", 0, 0)]
    old = football("2H", 1, 0, clock="90+4", periods=periods)
    new = football("FT", 1, 0, clock="90", periods=periods, detail="Match Finished")
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.finished"]
    assert changes[0].changes["status.phase"] == "finished"
    assert changes[0].changes["status.code"] == "FT"
    assert (changes[0].changes["home.score"], changes[0].changes["away.score"]) == (1, 0)


def test_goal_and_final_whistle_in_one_poll():
    old = football("2H", 0, 0, clock="90+3", periods=[Period("1H", 0, 0), Period("2H", 0, 0)])
    last = GameEvent("goal", "90+4", 36, "R. Jiménez", "Penalty")
    new = football("FT", 0, 1, clock="90", periods=[Period("1H", 0, 0), Period("2H", 0, 1)],
                   events=[last])
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.score", "game.event", "game.finished"]
    assert changes[2].changes["away.score"] == 1


def test_after_extra_time():
    periods = [Period("1H", 1, 1), Period("2H", 0, 0), Period("ET", 1, 0)]
    old = football("ET", 2, 1, clock="120+1", periods=periods)
    new = football("AET", 2, 1, clock="120", periods=periods, detail="Match Finished")
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.finished"]
    assert changes[0].changes["status.code"] == "AET"


def test_shoot_out_changes_periods_not_the_score():
    periods = [Period("1H", 0, 0), Period("2H", 1, 1), Period("ET", 0, 0)]
    old = football("P", 1, 1, clock="120", periods=[*periods, Period("PEN", 3, 2)])
    new = football("PEN", 1, 1, clock="120", periods=[*periods, Period("PEN", 4, 2)])
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.finished"]  # the periods ride with the final state
    assert changes[0].changes["periods"][-1] == {"name": "PEN", "home": 4, "away": 2}


def test_a_clock_tick_alone_is_nothing():
    old = football("2H", 1, 0, clock="67", periods=[Period("1H", 1, 0)], events=[GOAL])
    new = football("2H", 1, 0, clock="68", periods=[Period("1H", 1, 0)], events=[GOAL],
                   at="2024-08-16T20:32:07Z")
    assert diff_games(old, new) == []
    assert diff_games(old, old) == []


def test_var_cancelled_goal_is_a_score_change_and_a_var_event():
    old = football("1H", 1, 0, clock="24", periods=[Period("1H", 1, 0)], events=[GOAL])
    new = football("1H", 0, 0, clock="25", periods=[Period("1H", 0, 0)], events=[GOAL, VAR])
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.score", "game.event"]
    assert changes[0].changes["home.score"] == 0
    assert changes[1].game_event == VAR


def test_var_cancelled_goal_the_upstream_deleted_also_updates_the_list():
    old = football("1H", 1, 0, clock="24", periods=[Period("1H", 1, 0)], events=[GOAL, CARD])
    new = football("1H", 0, 0, clock="31", periods=[Period("1H", 0, 0)], events=[VAR, CARD])
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.score", "game.event", "game.updated"]
    assert changes[1].game_event == VAR
    assert [e["type"] for e in changes[2].changes["events"]] == ["var", "card"]


def test_resent_or_reordered_events_are_not_new():
    old = football("1H", 1, 0, clock="31", periods=[Period("1H", 1, 0)], events=[GOAL, CARD])
    resent = replace(old, events=(GOAL, CARD))
    assert diff_games(old, resent) == []
    reordered = replace(old, events=(CARD, GOAL))
    changes = assert_round_trip(old, reordered)
    assert kinds(changes) == ["game.updated"]  # the order changed, nothing new happened
    twice = replace(old, events=(GOAL, CARD, CARD))  # a second identical card is new
    assert kinds(diff_games(old, twice)) == ["game.event"]


def test_rescheduled_start_is_an_update():
    old = football("NS")
    new = football("NS", start="2024-08-17T14:00:00Z")
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.updated"]
    assert changes[0].changes == {"start_time": "2024-08-17T14:00:00Z"}


def test_postponed_and_back_to_scheduled_are_status_changes():
    old = football("NS")
    postponed = football("PST", detail="Match Postponed")
    changes = assert_round_trip(old, postponed)
    assert kinds(changes) == ["game.status"]
    assert changes[0].changes["status.phase"] == "postponed"
    again = football("NS", start="2024-09-01T19:00:00Z")
    assert kinds(assert_round_trip(postponed, again)) == ["game.status", "game.updated"]


def test_names_league_and_detail_are_updates():
    old = football("2H", 1, 0, clock="70")
    new = replace(old, league=replace(old.league, name="EPL", season="2024-2025"),
                  home=replace(old.home, name="Man Utd"),
                  status=replace(old.status, detail="2nd Half", clock="71"))
    changes = assert_round_trip(old, new, exact_clock=False)
    assert kinds(changes) == ["game.updated"]
    assert changes[0].changes == {"status.detail": "2nd Half", "league.name": "EPL",
                                  "league.season": "2024-2025", "home.name": "Man Utd"}


def test_events_not_fetched_any_more_are_an_explicit_update():
    old = football("2H", 1, 0, events=[GOAL])
    new = replace(old, events=None)
    changes = assert_round_trip(old, new)
    assert changes[0].changes == {"events": None}
    first = assert_round_trip(new, old)  # known again: the event is new to clients
    assert kinds(first) == ["game.event"]


def test_apply_sets_seq_from_numbered_changes_and_rejects_other_games():
    old = football("1H", 0, 0, clock="22", periods=[Period("1H", 0, 0)])
    new = football("1H", 1, 0, clock="23", periods=[Period("1H", 1, 0)], events=[GOAL])
    numbered = [replace(c, seq=17 + i) for i, c in enumerate(diff_games(old, new))]
    assert apply_changes(old, numbered).seq == 18
    other = replace(numbered[0], game_id=1)
    with pytest.raises(ValueError):
        apply_changes(old, [other])
    with pytest.raises(ValueError):
        apply_changes(old, [replace(numbered[0], changes={"home.colour": "red"})])
    with pytest.raises(ValueError):
        diff_games(old, replace(new, id=2))


def test_changes_survive_json():
    old = football("NS")
    new = football("1H", 0, 0, clock="1", periods=[Period("1H", 0, 0)], events=[])
    for change in diff_games(old, new):
        assert change.to_json()["changes"]["status.phase"] == "live"


# --- properties ---------------------------------------------------------------------

CODES = ("NS", "1H", "HT", "2H", "FT", "PST", "CANC", "ZZ")
PHASES = list(Phase)
scores = st.none() | st.integers(0, 3)
small_text = st.none() | st.sampled_from(["a", "b"])
events = st.builds(GameEvent, type=st.sampled_from(["goal", "card", "var"]),
                   clock=st.sampled_from([None, "10", "45+2"]),
                   team_id=st.sampled_from([None, 1, 2]), player=small_text, detail=small_text,
                   assist=small_text)
periods = st.lists(st.builds(Period, name=st.sampled_from(["1H", "2H", "ET", "PEN"]),
                             home=scores, away=scores), max_size=3).map(tuple)


@st.composite
def games(draw, game_id=7):
    return Game(
        id=game_id, sport="football",
        league=League(id=draw(st.sampled_from([1, 2])), name=draw(st.sampled_from(["L", "M"])),
                      country=draw(small_text),
                      season=draw(st.sampled_from([None, 2024, "2024-2025"]))),
        start_time=draw(st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"])),
        status=Status(phase=draw(st.sampled_from(PHASES)), code=draw(st.sampled_from(CODES)),
                      detail=draw(small_text), clock=draw(st.sampled_from([None, "1", "2"])),
                      period=draw(st.sampled_from([None, 1, 2])),
                      server_time=draw(st.sampled_from([None, "t1", "t2"]))),
        home=Team(draw(st.sampled_from([1, 3])), draw(st.sampled_from(["", "H"])), draw(scores)),
        away=Team(2, draw(st.sampled_from(["A", "B"])), draw(scores)),
        periods=draw(periods),
        events=draw(st.none() | st.lists(events, max_size=4).map(tuple)),
    )


@settings(max_examples=400, deadline=None)
@given(games(), games())
def test_apply_of_diff_reproduces_the_new_game(a, b):
    changes = diff_games(a, b)
    applied = apply_changes(a, changes)
    assert without_clock(applied) == without_clock(b)
    told_status = any(c.event in ("game.started", "game.status", "game.finished")
                      for c in changes)
    if told_status:
        assert applied.status == b.status
    if without_clock(a) == without_clock(b):
        assert changes == []  # a clock tick alone is not a change
    # score and events share a rank: events the poll brought before the first new goal
    # precede the score, so that the goal follows its score at once
    order = ["game.started", "game.status", "game.score", "game.finished", "game.updated"]
    ranks = [order.index("game.score" if c.event == "game.event" else c.event)
             for c in changes]
    assert ranks == sorted(ranks)
    kinds_told = [c.event for c in changes]
    goals = [i for i, c in enumerate(changes)
             if c.game_event is not None and c.game_event.type == "goal"]
    if "game.score" in kinds_told and goals:
        at = kinds_told.index("game.score")
        assert goals[0] == at + 1
        assert all(c.event != "game.event" or i > at or c.game_event.type != "goal"
                   for i, c in enumerate(changes))
    assert all(isinstance(c, Change) and c.game_id == 7 for c in changes)
    # the data is JSON-ready: through the one encoding and back, nothing changes
    assert game_from_json(game_to_json(applied)) == applied


@settings(max_examples=200, deadline=None)
@given(st.lists(games(), min_size=1, max_size=6), st.data())
def test_snapshot_plus_later_changes_equals_a_fresh_snapshot(states, data):
    # The store's view: every change gets the next seq, the stored game carries the last.
    log: list[Change] = []
    stored = [replace(states[0], seq=0)]
    for before, after in itertools.pairwise(states):
        for change in diff_games(before, after):
            log.append(replace(change, seq=len(log) + 1))
        stored.append(replace(after, seq=len(log)))
    # A client snapshots at any point, then applies what it receives after that seq.
    at = data.draw(st.integers(0, len(states) - 1))
    snapshot = stored[at]
    caught_up = apply_changes(snapshot, [c for c in log if c.seq > snapshot.seq])
    assert without_clock(caught_up) == without_clock(stored[-1])
    assert caught_up.seq == stored[-1].seq


def test_an_earlier_event_in_the_same_poll_goes_before_the_score_its_goal_follows():
    sub = GameEvent("substitution", "22", 34, "A. Onana", assist="T. Heaton")
    old = football("1H", 0, 0, clock="21", periods=[Period("1H", 0, 0)], events=[CARD])
    new = football("1H", 1, 0, clock="23", periods=[Period("1H", 1, 0)],
                   events=[CARD, sub, GOAL], at="2024-08-16T19:23:05Z")
    changes = assert_round_trip(old, new)
    assert kinds(changes) == ["game.event", "game.score", "game.event"]
    assert [c.game_event for c in changes] == [sub, None, GOAL]
