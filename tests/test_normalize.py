"""normalize: every sport's upstream JSON -> Game, on the simulator's real output and on
hand-written edge cases (penalties, extra time, postponed, awarded, missing fields,
codes outside the contract's table).

The contract's phase table is written out here as the contract prints it and parsed,
independently of `normalize.PHASES`, so that a slip in one is caught by the other.
"""

from __future__ import annotations

import copy
import logging
import re
import time
import uuid

import pytest

from btsguru.diff import apply_changes, diff_games
from btsguru.sports import SPORTS
from btsguru.sports.base import GameEvent, Period, Phase, game_from_json, game_to_json
from btsguru.sports.normalize import (
    PHASES,
    SPORTS_WITH_EVENTS,
    carry_events,
    normalize_events,
    normalize_games,
    with_events,
)
from tests.simulator_helpers import control, get_json, running, utc_day

NOW = "2025-03-01T16:07:00Z"

CONTRACT_TABLE = """
| phase | football | basketball | hockey | baseball | american-football |
|---|---|---|---|---|---|
| scheduled | TBD NS | NS | NS | NS | NS |
| live | 1H 2H ET P LIVE | Q1 Q2 Q3 Q4 OT | P1 P2 P3 OT PT | IN1 … IN9 | Q1 Q2 Q3 Q4 OT |
| break | HT BT | HT BT | BT | — | HT |
| interrupted | SUSP INT | SUSP | INTR | INTR | — |
| finished | FT AET PEN AWD WO | FT AOT AWD | FT AOT AP AW | FT | FT AOT |
| postponed | PST | POST | POST | POST | PST |
| cancelled | CANC ABD | CANC ABD | CANC ABD | CANC ABD | CANC ABD |
"""


def contract_phases():
    rows = [line.strip("|").split("|") for line in CONTRACT_TABLE.strip().splitlines()]
    sports = [cell.strip() for cell in rows[0][1:]]
    table = {sport: {} for sport in sports}
    for row in rows[2:]:
        phase = Phase(row[0].strip())
        for sport, cell in zip(sports, row[1:], strict=True):
            codes = cell.split()
            if codes == ["IN1", "…", "IN9"]:
                codes = [f"IN{n}" for n in range(1, 10)]
            for code in codes:
                if code != "—":
                    assert code not in table[sport], (sport, code)
                    table[sport][code] = phase
    return table


EXPECTED = contract_phases()
PERIOD_NAMES = {
    "football": ["1H", "2H", "ET", "PEN"],
    "basketball": ["Q1", "Q2", "Q3", "Q4", "OT"],
    "hockey": ["P1", "P2", "P3", "OT", "PEN"],
    "baseball": [*(f"IN{n}" for n in range(1, 10)), "EXTRA"],
    "american-football": ["Q1", "Q2", "Q3", "Q4", "OT"],
}
UTC_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


# --- hand-written upstream items --------------------------------------------------------


def fixture(short="2H", *, goals=(2, 1), halftime=(1, 1), fulltime=(None, None),
            extratime=(None, None), penalty=(None, None), elapsed=67, extra=None,
            events=None, **over):
    item = {
        "fixture": {"id": 900001, "referee": None, "timezone": "UTC",
                    "date": "2025-03-01T15:00:00+00:00", "timestamp": 1740841200,
                    "periods": {"first": 1740841200, "second": None},
                    "venue": {"id": 0, "name": None, "city": None},
                    "status": {"long": "Second Half", "short": short, "elapsed": elapsed,
                               "extra": extra}},
        "league": {"id": 5001, "name": "Demo League", "country": "Demoland", "logo": "x",
                   "flag": None, "season": 2024, "round": "Regular Season - 20"},
        "teams": {"home": {"id": 11, "name": "North FC", "logo": "x", "winner": True},
                  "away": {"id": 22, "name": "South United", "logo": "x", "winner": False}},
        "goals": {"home": goals[0], "away": goals[1]},
        "score": {"halftime": dict(zip(("home", "away"), halftime, strict=True)),
                  "fulltime": dict(zip(("home", "away"), fulltime, strict=True)),
                  "extratime": dict(zip(("home", "away"), extratime, strict=True)),
                  "penalty": dict(zip(("home", "away"), penalty, strict=True))},
    }
    if events is not None:
        item["events"] = events
    item.update(over)
    return item


def football_event(kind, detail, minute, *, extra=None, team=11, player="J. Striker",
                   assist=None):
    return {"time": {"elapsed": minute, "extra": extra},
            "team": {"id": team, "name": "North FC", "logo": "x"},
            "player": {"id": 301, "name": player}, "assist": {"id": None, "name": assist},
            "type": kind, "detail": detail, "comments": None}


def basketball_game(short="Q3", home=None, away=None, timer="6", season="2024-2025"):
    keys = ("quarter_1", "quarter_2", "quarter_3", "quarter_4", "over_time", "total")
    home = home or (24, 27, 9, None, None, 60)
    away = away or (22, 25, 11, None, None, 58)
    return {"id": 700001, "date": "2025-02-10T01:30:00+00:00", "time": "01:30",
            "timestamp": 1739151000, "timezone": "UTC", "stage": None, "week": None,
            "venue": "Demo Arena", "status": {"long": "Quarter 3", "short": short, "timer": timer},
            "league": {"id": 9001, "name": "Demo Basket League", "type": "League",
                       "season": season, "logo": "x"},
            "country": {"id": 5, "name": "Europe", "code": " ", "flag": None},
            "teams": {"home": {"id": 31, "name": "Lakeside Hawks", "logo": "x"},
                      "away": {"id": 32, "name": "Riverside Owls", "logo": "x"}},
            "scores": {"home": dict(zip(keys, home, strict=True)),
                       "away": dict(zip(keys, away, strict=True))}}


def hockey_game(short="P2", scores=(2, 1), periods=("1-1", "1-0", None, None, None),
                timer="12"):
    return {"id": 800001, "date": "2025-01-15T00:00:00+00:00", "time": "00:00",
            "timestamp": 1736899200, "timezone": "UTC", "week": None, "timer": timer,
            "status": {"long": "Second Period", "short": short},
            "country": {"id": 31, "name": "USA", "code": "US", "flag": None},
            "league": {"id": 9101, "name": "Demo Hockey League", "type": "League",
                       "logo": "x", "season": 2024},
            "teams": {"home": {"id": 41, "name": "Ice Bears", "logo": "x"},
                      "away": {"id": 42, "name": "Frost Wolves", "logo": "x"}},
            "scores": {"home": scores[0], "away": scores[1]},
            "periods": dict(zip(("first", "second", "third", "overtime", "penalties"), periods,
                                strict=True)),
            "events": True}


def baseball_game(short="IN5", home=None, away=None):
    def side(innings, total):
        keys = [*(str(n) for n in range(1, 10)), "extra"]
        return {"hits": 5, "errors": 0, "innings": dict(zip(keys, innings, strict=True)),
                "total": total}
    none9 = [None] * 10
    return {"id": 600001, "date": "2025-06-01T23:10:00+00:00", "time": "23:10",
            "timestamp": 1748819400, "timezone": "UTC", "week": None,
            "status": {"long": "Inning 5", "short": short},
            "country": {"id": 1, "name": "USA", "code": "US", "flag": None},
            "league": {"id": 9201, "name": "Demo Baseball League", "type": "League",
                       "logo": "x", "season": 2025},
            "teams": {"home": {"id": 51, "name": "Harbor Cats", "logo": "x"},
                      "away": {"id": 52, "name": "Canyon Foxes", "logo": "x"}},
            "scores": {"home": side(*(home or (none9, None))),
                       "away": side(*(away or (none9, None)))}}


def american_football_game(short="Q2", home=(7, 3, None, None, None, 10),
                           away=(0, 7, None, None, None, 7), timer="07:41"):
    keys = ("quarter_1", "quarter_2", "quarter_3", "quarter_4", "overtime", "total")
    return {"game": {"id": 500001, "stage": "Regular Season", "week": "Week 3",
                     "date": {"timezone": "UTC", "date": "2024-09-22", "time": "17:00",
                              "timestamp": 1727024400},
                     "venue": {"name": "Demo Field", "city": "Demo City"},
                     "status": {"short": short, "long": "Second Quarter", "timer": timer}},
            "league": {"id": 1, "name": "NFL", "season": "2024", "logo": "x",
                       "country": {"name": "USA", "code": "US", "flag": None}},
            "teams": {"home": {"id": 61, "name": "Metro Miners", "logo": "x"},
                      "away": {"id": 62, "name": "Bay Sharks", "logo": "x"}},
            "scores": {"home": dict(zip(keys, home, strict=True)),
                       "away": dict(zip(keys, away, strict=True))}}


def item_with_code(sport, code):
    if sport == "football":
        return fixture(code)
    if sport == "basketball":
        return basketball_game(code)
    if sport == "hockey":
        return hockey_game(code)
    if sport == "baseball":
        innings = [1, 0, 2, 0, *[None] * 6]
        return baseball_game(code, home=(innings, 3), away=(innings, 3))
    return american_football_game(code)


def unscored_item_with_code(sport, code):
    """An item as the upstream sends a game that has not begun: every score null."""
    if sport == "football":
        return fixture(code, goals=(None, None), halftime=(None, None), elapsed=None)
    if sport == "basketball":
        return basketball_game(code, home=(None,) * 6, away=(None,) * 6, timer=None)
    if sport == "hockey":
        return hockey_game(code, scores=(None, None), periods=(None,) * 5, timer=None)
    if sport == "baseball":
        return baseball_game(code)
    return american_football_game(code, home=(None,) * 6, away=(None,) * 6, timer=None)


def one(sport, item, observed_at=NOW):
    games = normalize_games(sport, [item], observed_at=observed_at)
    assert len(games) == 1
    return games[0]


def score(game):
    return game.home.score, game.away.score


def periods(game):
    return [(p.name, p.home, p.away) for p in game.periods]


# --- the phase table --------------------------------------------------------------------


def test_phases_are_the_contracts_table_exactly():
    assert set(EXPECTED) == set(SPORTS) == set(PHASES)
    for sport in SPORTS:
        assert dict(PHASES[sport]) == EXPECTED[sport], sport


@pytest.mark.parametrize("sport", SPORTS)
def test_every_code_of_the_table_normalizes_to_its_phase(sport, caplog):
    with caplog.at_level(logging.WARNING):
        for code, phase in EXPECTED[sport].items():
            game = one(sport, item_with_code(sport, code))
            assert one(sport, unscored_item_with_code(sport, code)).status.phase is phase
            assert game.status.phase is phase, (sport, code)
            assert game.status.code == code
            if phase is Phase.SCHEDULED:
                assert score(game) == (None, None), (sport, code)
            else:
                assert None not in score(game), (sport, code)
            if phase in (Phase.LIVE, Phase.BREAK):
                assert game.status.period is not None, (sport, code)
    assert caplog.records == []  # no code of the table is "unknown"


@pytest.mark.parametrize("sport", SPORTS)
def test_code_outside_the_table_keeps_the_game_and_warns_once(sport, caplog):
    code = "Z" + uuid.uuid4().hex[:6].upper()  # unseen by this process's warn-once memory
    scored = item_with_code(sport, code)
    unscored = unscored_item_with_code(sport, code)
    with caplog.at_level(logging.WARNING, logger="btsguru.sports"):
        live = one(sport, scored)
        again = normalize_games(sport, [scored, scored], observed_at=NOW)
        waiting = one(sport, unscored)
    assert live.status.phase is Phase.LIVE and live.status.code == code
    assert [g.status.phase for g in again] == [Phase.LIVE, Phase.LIVE]
    assert waiting.status.phase is Phase.SCHEDULED and score(waiting) == (None, None)
    warnings = [r for r in caplog.records if code in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING and sport in warnings[0].getMessage()


# --- football -----------------------------------------------------------------------------


def test_football_live_fixture():
    events = [football_event("Goal", "Normal Goal", 58, player="J. Striker", assist="A. Mid"),
              football_event("Card", "Yellow Card", 45, extra=2, team=22, player="B. Back"),
              football_event("subst", "Substitution 1", 60, player="Out", assist="In"),
              football_event("Var", "Goal cancelled", 62, team=22, player="C. Fwd"),
              football_event("Goal", "Missed Penalty", 64),
              football_event("Goal", "Own Goal", 66, team=22, player="D. Def")]
    game = one("football", fixture("2H", goals=(2, 1), halftime=(1, 1), elapsed=67,
                                   events=events))
    assert game_to_json(game) | {"events": None} == {
        "id": 900001, "sport": "football",
        "league": {"id": 5001, "name": "Demo League", "country": "Demoland", "season": 2024},
        "start_time": "2025-03-01T15:00:00Z",
        "status": {"phase": "live", "code": "2H", "detail": "Second Half", "clock": "67",
                   "period": 2, "server_time": NOW},
        "home": {"id": 11, "name": "North FC", "score": 2},
        "away": {"id": 22, "name": "South United", "score": 1},
        "periods": [{"name": "1H", "home": 1, "away": 1}, {"name": "2H", "home": 1, "away": 0}],
        "seq": 0, "updated_at": None, "events": None}
    assert game.events == (
        GameEvent("card", "45+2", 22, "B. Back", "Yellow Card"),  # sorted by match time
        GameEvent("goal", "58", 11, "J. Striker", "Normal Goal", assist="A. Mid"),
        GameEvent("substitution", "60", 11, "Out", "Substitution 1", assist="In"),
        GameEvent("var", "62", 22, "C. Fwd", "Goal cancelled"),
        GameEvent("missed_penalty", "64", 11, "J. Striker", "Missed Penalty"),
        GameEvent("goal", "66", 22, "D. Def", "Own Goal"))
    reordered = one("football", fixture("2H", goals=(2, 1), elapsed=67,
                                        events=list(reversed(events))))
    assert reordered.events == game.events
    assert normalize_events("football", events) == game.events


def test_football_first_half_and_added_time():
    game = one("football", fixture("1H", goals=(0, 1), halftime=(None, None), elapsed=45,
                                   extra=2))
    assert game.status.clock == "45+2" and game.status.period == 1
    assert periods(game) == [("1H", 0, 1)]  # the half being played, from the running score


def test_football_penalties_score_excludes_the_shoot_out():
    game = one("football", fixture("PEN", goals=(1, 1), halftime=(0, 1), fulltime=(1, 1),
                                   extratime=(0, 0), penalty=(4, 3), elapsed=120))
    assert game.status.phase is Phase.FINISHED
    assert score(game) == (1, 1)
    assert periods(game) == [("1H", 0, 1), ("2H", 1, 0), ("ET", 0, 0), ("PEN", 4, 3)]
    assert game.status.period is None
    shootout = one("football", fixture("P", goals=(1, 1), halftime=(0, 1), fulltime=(1, 1),
                                       extratime=(0, 0), penalty=(2, 1), elapsed=120))
    assert shootout.status.phase is Phase.LIVE and shootout.status.period == 4
    assert score(shootout) == (1, 1) and periods(shootout)[-1] == ("PEN", 2, 1)


def test_football_after_extra_time():
    game = one("football", fixture("AET", goals=(3, 2), halftime=(1, 0), fulltime=(2, 2),
                                   extratime=(1, 0), elapsed=120))
    assert (game.status.phase, score(game)) == (Phase.FINISHED, (3, 2))
    assert periods(game) == [("1H", 1, 0), ("2H", 1, 2), ("ET", 1, 0)]
    during = one("football", fixture("ET", goals=(3, 2), halftime=(1, 0), fulltime=(2, 2),
                                     elapsed=101))
    assert during.status.period == 3 and periods(during)[-1] == ("ET", 1, 0)


def test_football_postponed_abandoned_awarded_walkover():
    postponed = one("football", fixture("PST", goals=(None, None), halftime=(None, None),
                                        elapsed=None))
    assert (postponed.status.phase, score(postponed), postponed.periods) == (
        Phase.POSTPONED, (None, None), ())
    assert postponed.status.clock is None and postponed.events is None
    abandoned = one("football", fixture("ABD", goals=(1, 0), halftime=(None, None),
                                        elapsed=28))
    assert (abandoned.status.phase, score(abandoned)) == (Phase.CANCELLED, (1, 0))
    awarded = one("football", fixture("AWD", goals=(0, 3), halftime=(None, None),
                                      fulltime=(0, 3), elapsed=None))
    assert (awarded.status.phase, score(awarded), periods(awarded)) == (
        Phase.FINISHED, (0, 3), [])
    walkover = one("football", fixture("WO", goals=(None, None), halftime=(None, None),
                                       elapsed=None))
    assert (walkover.status.phase, score(walkover)) == (Phase.FINISHED, (None, None))


def test_football_scheduled_has_no_score_and_no_events_yet():
    game = one("football", fixture("NS", goals=(0, 0), halftime=(0, 0), elapsed=None))
    assert score(game) == (None, None) and game.events == () and game.periods == ()
    assert game.status.period is None and game.status.clock is None


def test_football_events_not_fetched_are_kept_over_a_sweep():
    live = one("football", fixture("2H", events=[football_event("Goal", "Normal Goal", 58)]))
    swept = one("football", fixture("2H", elapsed=70))  # a date= query: no events key
    assert swept.events is None
    kept = carry_events(live, swept)
    assert kept.events == live.events and kept.status.clock == "70"
    assert carry_events(None, swept) is swept
    assert diff_games(live, kept) == []  # only the clock moved
    fetched = one("football", fixture("2H", events=[]))
    assert fetched.events == ()


# --- the other sports ---------------------------------------------------------------------


def test_basketball_overtime_and_season_shapes():
    game = one("basketball", basketball_game("OT", home=(20, 25, 30, 20, 7, 102),
                                             away=(25, 20, 25, 25, 5, 100), timer="3"))
    assert (game.status.phase, game.status.period, game.status.clock) == (Phase.LIVE, 5, "3")
    assert score(game) == (102, 100)
    assert [p.name for p in game.periods] == ["Q1", "Q2", "Q3", "Q4", "OT"]
    assert game.league.season == "2024-2025" and game.league.country == "Europe"
    assert game.events is None
    calendar = one("basketball", basketball_game(season=2025))
    assert calendar.league.season == 2025
    after = one("basketball", basketball_game("AOT", home=(20, 25, 30, 20, 7, 102),
                                              away=(25, 20, 25, 25, 5, 100), timer=None))
    assert (after.status.phase, after.status.period) == (Phase.FINISHED, None)
    brk = one("basketball", basketball_game("BT", timer=None))
    assert (brk.status.phase, brk.status.period) == (Phase.BREAK, 3)


def test_basketball_awarded_and_abandoned():
    none = (None,) * 5
    awarded = one("basketball", basketball_game("AWD", home=(*none, 20), away=(*none, 0)))
    assert (awarded.status.phase, score(awarded), awarded.periods) == (
        Phase.FINISHED, (20, 0), ())
    abandoned = one("basketball", basketball_game("ABD"))
    assert (abandoned.status.phase, score(abandoned)) == (Phase.CANCELLED, (60, 58))


def test_hockey_periods_from_strings_and_shoot_out():
    live = one("hockey", hockey_game())
    assert (live.status.phase, live.status.clock, live.status.period) == (Phase.LIVE, "12", 2)
    assert periods(live) == [("P1", 1, 1), ("P2", 1, 0)]
    assert live.events is None  # /games carries no detail: not fetched
    shootout = one("hockey", hockey_game("PT", scores=(2, 2),
                                         periods=("1-0", "0-1", "1-1", "0-0", "1-0"),
                                         timer=None))
    assert (shootout.status.phase, shootout.status.period) == (Phase.LIVE, 5)
    assert periods(shootout)[-2:] == [("OT", 0, 0), ("PEN", 1, 0)]
    after = one("hockey", hockey_game("AP", scores=(3, 2),
                                      periods=("1-0", "0-1", "1-1", "0-0", "2-1"), timer=None))
    assert (after.status.phase, score(after)) == (Phase.FINISHED, (3, 2))
    odd = one("hockey", hockey_game(periods=("1-1", "garbage", "", None, "3")))
    assert periods(odd) == [("P1", 1, 1)]
    awarded = one("hockey", hockey_game("AW", scores=(5, 0), periods=(None,) * 5))
    assert (awarded.status.phase, awarded.periods) == (Phase.FINISHED, ())


def test_hockey_events_merge_in():
    raw = [{"game_id": 800001, "period": "P1", "minute": "03",
            "team": {"id": 41, "name": "Ice Bears", "logo": "x"}, "players": ["A. Winger"],
            "assists": ["B. Centre", "C. Back"], "comment": None, "type": "goal"},
           {"game_id": 800001, "period": "P2", "minute": "03", "team": {"id": 42},
            "players": [], "assists": [], "comment": "Tripping", "type": "penalty"},
           None, "junk"]
    events = normalize_events("hockey", raw)
    assert events == (GameEvent("goal", "P1 03", 41, "A. Winger", None,
                                assist="B. Centre, C. Back"),
                      GameEvent("penalty", "P2 03", 42, None, "Tripping"))
    game = with_events(one("hockey", hockey_game()), events)
    assert game.events == events
    assert game_from_json(game_to_json(game)) == game
    assert normalize_events("hockey", {"oops": 1}) == ()
    with pytest.raises(ValueError):
        normalize_events("baseball", [])


def test_baseball_extra_innings():
    home = ([0, 1, 0, 0, 2, 0, 0, 0, 0, 1], 4)
    away = ([1, 0, 0, 2, 0, 0, 0, 0, 0, 0], 3)
    game = one("baseball", baseball_game("FT", home=home, away=away))
    assert (game.status.phase, score(game), game.status.clock) == (Phase.FINISHED, (4, 3), None)
    assert [p.name for p in game.periods] == [*(f"IN{n}" for n in range(1, 10)), "EXTRA"]
    assert game.periods[-1] == Period("EXTRA", 1, 0)
    live = one("baseball", baseball_game("IN5", home=([0, 1, 0, 0, None, *[None] * 5], 1),
                                         away=([1, 0, 0, 2, 0, *[None] * 5], 3)))
    assert (live.status.period, live.periods[-1]) == (5, Period("IN5", None, 0))
    interrupted = one("baseball", baseball_game(
        "INTR", home=([0, 1, 0, *[None] * 7], 1), away=([1, 0, 0, 2, *[None] * 6], 3)))
    assert (interrupted.status.phase, interrupted.status.period) == (Phase.INTERRUPTED, 4)


def test_american_football_postponed_and_overtime():
    postponed = one("american-football", american_football_game(
        "PST", home=(None,) * 6, away=(None,) * 6, timer=None))
    assert (postponed.status.phase, score(postponed)) == (Phase.POSTPONED, (None, None))
    overtime = one("american-football", american_football_game(
        "OT", home=(7, 3, 7, 7, None, 24), away=(0, 7, 10, 7, None, 24), timer="08:12"))
    assert (overtime.status.phase, overtime.status.period, overtime.status.clock) == (
        Phase.LIVE, 5, "08:12")
    final = one("american-football", american_football_game(
        "AOT", home=(7, 3, 7, 7, 6, 30), away=(0, 7, 10, 7, 0, 24), timer=None))
    assert final.status.phase is Phase.FINISHED and final.periods[-1] == Period("OT", 6, 0)
    assert final.league.season == 2024  # "2024" as a number, like every other sport
    assert final.start_time == "2024-09-22T17:00:00Z"
    halftime = one("american-football", american_football_game("HT", timer=None))
    assert (halftime.status.phase, halftime.status.period) == (Phase.BREAK, 2)


# --- drift and missing fields ---------------------------------------------------------------


@pytest.mark.parametrize("sport", SPORTS)
def test_missing_fields_never_crash(sport, caplog):
    base = item_with_code(sport, "NS")
    variants = [{}, {"id": None}, {"id": 5, "status": None, "teams": None, "scores": None,
                                   "league": [], "country": None, "periods": None},
                {"fixture": {"id": 5}}, {"game": {"id": 5}}, {"fixture": {"id": "5"},
                                                              "goals": None, "score": []},
                {"game": {"id": "5", "date": None, "status": []}, "teams": {"home": None}}]
    bare = copy.deepcopy(base)
    for key in list(bare):
        if key not in ("fixture", "game", "id"):
            del bare[key]
    variants.append(bare)
    with caplog.at_level(logging.WARNING):
        games = normalize_games(sport, [*variants, None, "junk", 7], observed_at=NOW)
        assert normalize_games(sport, {"account": {}}, observed_at=NOW) == []
        assert normalize_games(sport, [], observed_at=NOW) == []
    assert games  # the ones with an id are kept
    for game in games:
        assert game.id in (5, 900001, 700001, 800001, 600001, 500001)
        assert isinstance(game.home.name, str) and isinstance(game.league.name, str)
        assert game.status.phase in (Phase.SCHEDULED, Phase.LIVE)
        assert game_from_json(game_to_json(game)) == game


def test_null_teams_status_and_scores():
    item = fixture("2H")
    item["teams"] = {"home": None, "away": {"id": None, "name": None}}
    del item["fixture"]["status"]
    item["goals"] = {"home": None, "away": None}
    game = one("football", item)
    assert (game.home.id, game.home.name, game.away.id, game.away.name) == (0, "", 0, "")
    assert game.status.code == "" and game.status.phase is Phase.SCHEDULED
    assert score(game) == (None, None)


def test_drifted_shapes_are_read():
    item = fixture("2H", goals=("2", 1))
    item["league"]["season"] = "2024"
    item["fixture"]["id"] = "900001"
    item["fixture"]["timestamp"] = None  # falls back to the date with its offset
    item["fixture"]["date"] = "2025-03-01T16:00:00+01:00"
    game = one("football", item)
    assert (game.id, game.league.season, score(game)) == (900001, 2024, (2, 1))
    assert game.start_time == "2025-03-01T15:00:00Z"
    item["fixture"]["date"] = "not a date"
    assert one("football", item).start_time == ""
    country = one("basketball", basketball_game())
    assert country.league.country == "Europe"


def test_unknown_sport_is_a_caller_bug():
    with pytest.raises(ValueError):
        normalize_games("curling", [], observed_at=NOW)


# --- the simulator's real output ------------------------------------------------------------


def check_invariants(sport, game, *, observed_at, with_events):
    code = game.status.code
    assert code in EXPECTED[sport], (sport, code)
    phase = game.status.phase
    assert phase is EXPECTED[sport][code], (sport, code)
    assert game.id > 0 and game.sport == sport
    assert game.league.id > 0 and game.league.name
    assert game.home.id > 0 and game.away.id > 0 and game.home.name and game.away.name
    assert UTC_RE.fullmatch(game.start_time)
    assert game.status.server_time == observed_at
    not_played = phase in (Phase.SCHEDULED, Phase.POSTPONED) or code in ("CANC", "WO")
    if not_played:
        assert score(game) == (None, None), (sport, code)
    else:
        assert all(isinstance(s, int) for s in score(game)), (sport, code)
    names = [p.name for p in game.periods]
    order = PERIOD_NAMES[sport]
    assert names == sorted(names, key=order.index), (sport, names)
    if phase in (Phase.LIVE, Phase.BREAK):
        assert game.status.period is not None, (sport, code)
    if sport == "baseball":
        assert game.status.clock is None
    if sport == "football" and phase is Phase.LIVE:
        assert re.fullmatch(r"\d+(\+\d+)?", game.status.clock or ""), game.status.clock
    # the periods add up to the score (hockey's shoot-out winner gets one more goal)
    if game.periods and not not_played and code not in ("AWD", "AW"):
        regular = [p for p in game.periods if p.name != "PEN"]
        total = (sum(p.home or 0 for p in regular), sum(p.away or 0 for p in regular))
        if sport == "hockey" and code == "AP":
            assert sum(total) + 1 == sum(score(game))
        else:
            assert total == score(game), (sport, code, periods(game), score(game))
    if sport in SPORTS_WITH_EVENTS:
        if phase is Phase.SCHEDULED or with_events:
            assert isinstance(game.events, tuple)
        else:
            assert game.events is None
    else:
        assert game.events is None
    assert game_from_json(game_to_json(game)) == game


def game_id_of(sport, item):
    if sport == "football":
        return item["fixture"]["id"]
    return item["game"]["id"] if sport == "american-football" else item["id"]


async def test_every_sport_on_the_simulators_output():
    async with running(seed=1) as server:
        seen_phases = {sport: set() for sport in SPORTS}
        for sport in SPORTS:
            endpoint = "fixtures" if sport == "football" else "games"
            queries = [f"date={utc_day(d)}" for d in (-1, 0, 1)]
            if sport in ("football", "american-football"):
                queries.append("live=all")
            first_live = None
            for query in queries:
                code, body = await get_json(server, f"/{sport}/{endpoint}?{query}")
                assert code == 200 and body["errors"] == [], body["errors"]
                observed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                games = normalize_games(sport, body["response"], observed_at=observed)
                assert len(games) == len(body["response"]) > 0
                for game in games:
                    check_invariants(sport, game, observed_at=observed,
                                     with_events=(sport == "football" and query == "live=all"))
                    seen_phases[sport].add(game.status.phase)
                # any day's list will do: just after midnight UTC the live games are
                # yesterday's
                if query == "live=all" or first_live is None:
                    first_live = next((item for item in body["response"]
                                       if normalize_games(sport, [item], observed_at=observed)[0]
                                       .status.phase is Phase.LIVE), first_live)
            assert first_live is not None, sport
            one_id = game_id_of(sport, first_live)
            _, body = await get_json(server, f"/{sport}/{endpoint}?id={one_id}")
            [game] = normalize_games(sport, body["response"], observed_at=NOW)
            assert game.id == one_id
            check_invariants(sport, game, observed_at=NOW, with_events=(sport == "football"))
            if sport == "football":
                _, events = await get_json(server, f"/football/fixtures/events?fixture={one_id}")
                assert normalize_events("football", events["response"]) == game.events
            if sport == "hockey":
                _, events = await get_json(server, f"/hockey/games/events?game={one_id}")
                merged = with_events(game, normalize_events("hockey", events["response"]))
                assert merged.events is not None
                assert {e.type for e in merged.events} <= {"goal", "penalty"}
                goals = [e for e in merged.events if e.type == "goal"]
                assert len(goals) == sum((p.home or 0) + (p.away or 0) for p in game.periods
                                         if p.name != "PEN")
        for sport in SPORTS:  # the day spans every kind of phase
            assert {Phase.SCHEDULED, Phase.LIVE, Phase.FINISHED} <= seen_phases[sport], sport


async def test_diffs_over_the_simulators_progression_reproduce_each_state():
    """Poll yesterday's and today's games as time runs (as the pollers do: just after
    midnight the games in play started yesterday): each new state is the old one plus
    its changes."""
    async with running(seed=3) as server:
        previous: dict[tuple[str, int], object] = {}
        kinds: set[str] = set()
        for step in range(8):
            for sport in SPORTS:
                endpoint = "fixtures" if sport == "football" else "games"
                items = []
                for day in (utc_day(-1), utc_day()):
                    _, body = await get_json(server, f"/{sport}/{endpoint}?date={day}")
                    items += body["response"]
                games = normalize_games(sport, items, observed_at=f"step {step}")
                if sport == "football":
                    _, live = await get_json(server, "/football/fixtures?live=all")
                    by_id = {g.id: g for g in normalize_games(
                        sport, live["response"], observed_at=f"step {step}")}
                    games = [by_id.get(g.id, g) for g in games]
                for polled in games:
                    old = previous.get((sport, polled.id))
                    game = carry_events(old, polled)
                    changes = diff_games(old, game)
                    kinds.update(c.event for c in changes)
                    if old is not None:
                        applied = apply_changes(old, changes)
                        assert applied.status.phase is game.status.phase
                        assert (applied.home, applied.away, applied.periods, applied.events) == (
                            game.home, game.away, game.periods, game.events)
                    previous[(sport, game.id)] = game
            await control(server, "advance", {"seconds": 170})
        assert {"game.score", "game.status", "game.event"} <= kinds, kinds
        assert kinds & {"game.started", "game.finished"}, kinds

