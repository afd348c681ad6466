"""API-Sports JSON for one simulated game, per sport, exactly as the upstream shapes it.

Where it sits: between `games` (a `GameState`: a game at one moment) and `api` (which
assembles envelopes). Football is API-Football v3's fixture; basketball, hockey and
baseball are the v1 "games" items; American football is its nested v1 item (see
upstream/API-SPORTS.md). Each function is pure: the same state and timezone always give
the same dict, which is what lets `api` cache the encoded bytes per state key.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from btsguru.simulator.catalog import Country, League, Team
from btsguru.simulator.games import Game, GameState
from btsguru.simulator.timelines import Event

LONG_NAMES: dict[str, dict[str, str]] = {
    "football": {
        "TBD": "Time To Be Defined", "NS": "Not Started", "1H": "First Half", "HT": "Halftime",
        "2H": "Second Half", "ET": "Extra Time", "BT": "Break Time", "P": "Penalty In Progress",
        "SUSP": "Match Suspended", "INT": "Match Interrupted", "LIVE": "In Progress",
        "FT": "Match Finished", "AET": "Match Finished", "PEN": "Match Finished",
        "PST": "Match Postponed", "CANC": "Match Cancelled", "ABD": "Match Abandoned",
        "AWD": "Technical Loss", "WO": "WalkOver",
    },
    "basketball": {
        "NS": "Not Started", "Q1": "Quarter 1", "Q2": "Quarter 2", "Q3": "Quarter 3",
        "Q4": "Quarter 4", "OT": "Over Time", "BT": "Break Time", "HT": "Halftime",
        "FT": "Game Finished", "AOT": "After Over Time", "POST": "Game Postponed",
        "CANC": "Game Cancelled", "SUSP": "Game Suspended", "AWD": "Game Awarded",
        "ABD": "Game Abandoned",
    },
    "hockey": {
        "NS": "Not Started", "P1": "First Period", "P2": "Second Period", "P3": "Third Period",
        "OT": "Over Time", "PT": "Penalties Time", "BT": "Break Time", "AW": "Awarded",
        "POST": "Postponed", "CANC": "Cancelled", "INTR": "Interrupted", "ABD": "Abandoned",
        "AOT": "After Over Time", "AP": "After Penalties", "FT": "Finished",
    },
    "baseball": {
        "NS": "Not Started", **{f"IN{n}": f"Inning {n}" for n in range(1, 10)},
        "FT": "Finished", "POST": "Postponed", "CANC": "Cancelled", "INTR": "Interrupted",
        "ABD": "Abandoned",
    },
    "american-football": {
        "NS": "Not Started", "Q1": "First Quarter", "Q2": "Second Quarter",
        "Q3": "Third Quarter", "Q4": "Fourth Quarter", "OT": "Overtime", "HT": "Halftime",
        "FT": "Finished", "AOT": "After Over Time", "CANC": "Cancelled", "PST": "Postponed",
    },
}

# Every status code each sport's games go through (the simulator's full vocabulary).
STATUS_CODES: dict[str, frozenset[str]] = {
    sport: frozenset(names) - {"LIVE"} for sport, names in LONG_NAMES.items()
}

# Football's in-play statuses: what `live=all` returns (American football: its live codes).
LIVE_CODES: dict[str, frozenset[str]] = {
    "football": frozenset({"1H", "HT", "2H", "ET", "BT", "P", "SUSP", "INT", "LIVE"}),
    "american-football": frozenset({"Q1", "Q2", "Q3", "Q4", "OT", "HT"}),
}


def team_ref(team: Team) -> dict[str, Any]:
    return {"id": team.id, "name": team.name, "logo": team.logo}


def country_v1(country: Country) -> dict[str, Any]:
    return {"id": country.id, "name": country.name, "code": country.code,
            "flag": country.flag}


def season_label(sport: str, league: League, start_year: int) -> int | str:
    """The season as the sport writes it: int, "YYYY-YYYY" (basketball) or "YYYY" (AF)."""
    if sport == "basketball" and league.season_kind == "cross":
        return f"{start_year}-{start_year + 1}"
    if sport == "american-football":
        return str(start_year)
    return start_year


def render_game(state: GameState, tz_name: str, tz: tzinfo, details: str) -> dict[str, Any]:
    """The API-Sports item for `state`.

    `details` is football's level of detail: "plain" (date, league, team queries),
    "events" (`live=all` adds the events) or "full" (`id`/`ids` add lineups, statistics
    and players as well).
    """
    sport = state.game.sport
    if sport == "football":
        return _football(state, tz_name, tz, details)
    if sport == "american-football":
        return _american_football(state, tz_name, tz)
    return _v1_game(state, tz_name, tz)


def _side_sums(events: tuple[Event, ...] | list[Event], period: str | None = None,
               kind: str | None = None, stat: str | None = None) -> list[int]:
    sums = [0, 0]
    for event in events:
        if event.stat != stat:
            continue
        if (period is None or event.period == period) and (kind is None or event.kind == kind):
            sums[event.side] += event.points
    return sums


# --- football ---------------------------------------------------------------------

Pair = list[int] | tuple[int, int] | None


def football_minute(clock_s: int, cap_min: int) -> tuple[int, int | None]:
    minute = clock_s // 60 + 1
    return (cap_min, minute - cap_min) if minute > cap_min else (minute, None)


def football_event(event: Event, game: Game) -> dict[str, Any]:
    if event.period == "PEN":
        elapsed, extra = 120, None
    else:
        cap = {"1H": 45, "2H": 90}.get(event.period, 120 if event.clock_s >= 105 * 60 else 105)
        elapsed, extra = football_minute(event.clock_s, cap)
    team = game.home if event.side == 0 else game.away
    return {
        "time": {"elapsed": elapsed, "extra": extra},
        "team": team_ref(team),
        "player": {"id": event.player.id if event.player else None,
                   "name": event.player.name if event.player else None},
        "assist": {"id": event.assist.id if event.assist else None,
                   "name": event.assist.name if event.assist else None},
        "type": event.kind, "detail": event.detail, "comments": event.comment,
    }


def _pair(values: Pair) -> dict[str, int | None]:
    if values is None:
        return {"home": None, "away": None}
    return {"home": values[0], "away": values[1]}


def _football_scores(state: GameState) -> tuple[Pair, Pair, Pair, Pair, Pair]:
    """goals, then score.halftime/fulltime/extratime/penalty: each filled once known."""
    game = state.game
    if not state.started:
        return None, None, None, None, None
    if game.awarded is not None:
        return game.awarded, None, game.awarded, None, None
    happened = state.happened()
    first, second, extra = (_side_sums(happened, p) for p in ("1H", "2H", "ET"))
    goals = [a + b + c for a, b, c in zip(first, second, extra, strict=True)]
    halftime = first if state.period_done("1H") else None
    fulltime = [a + b for a, b in zip(first, second, strict=True)] \
        if state.period_done("2H") else None
    extratime = extra if state.period_done("ET") else None
    penalty = _side_sums(happened, "PEN") if ("PEN", -1) in state.started_periods() else None
    return goals, halftime, fulltime, extratime, penalty


def _football(state: GameState, tz_name: str, tz: tzinfo, details: str) -> dict[str, Any]:
    game = state.game
    seg = state.seg
    happened = state.happened()
    elapsed: int | None = None
    extra: int | None = None
    if seg.show_clock:
        if seg.fixed is not None:
            elapsed = seg.fixed
        elif state.clock_s is not None:
            elapsed, extra = football_minute(state.clock_s, seg.period_end_s // 60)
    first = second = None
    for s in game.segments[: state.seg_index + 1]:
        if s.period == "1H" and first is None:
            first = game.start_ts + s.start_s
        if s.period == "2H" and second is None:
            second = game.start_ts + s.start_s
    goals, halftime, fulltime, extratime, penalty = _football_scores(state)
    winner: list[bool | None] = [None, None]
    decider = penalty if seg.code == "PEN" else goals
    if seg.code == "WO":
        winner = [True, False] if game.id % 2 else [False, True]
    elif decider is not None and decider[0] != decider[1]:
        winner = [decider[0] > decider[1], decider[1] > decider[0]]
    when = datetime.fromtimestamp(game.start_ts, tz)
    league = game.league
    item: dict[str, Any] = {
        "fixture": {
            "id": game.id, "referee": game.referee, "timezone": tz_name,
            "date": when.isoformat(), "timestamp": game.start_ts,
            "periods": {"first": first, "second": second},
            "venue": {"id": game.home.venue_id, "name": game.home.venue_name,
                      "city": game.home.city},
            "status": {"long": LONG_NAMES["football"][seg.code], "short": seg.code,
                       "elapsed": elapsed, "extra": extra},
        },
        "league": {"id": league.id, "name": league.name, "country": league.country.name,
                   "logo": league.logo, "flag": league.country.flag, "season": game.season,
                   "round": game.round, "standings": True},
        "teams": {
            "home": {**team_ref(game.home), "winner": winner[0]},
            "away": {**team_ref(game.away), "winner": winner[1]},
        },
        "goals": _pair(goals),
        "score": {"halftime": _pair(halftime), "fulltime": _pair(fulltime),
                  "extratime": _pair(extratime), "penalty": _pair(penalty)},
    }
    if details != "plain":
        item["events"] = [football_event(e, game) for e in happened]
    if details == "full":
        item.update(lineups=[], statistics=[], players=[])
    return item


# --- v1 games: basketball, hockey, baseball ----------------------------------------


def _v1_game(state: GameState, tz_name: str, tz: tzinfo) -> dict[str, Any]:
    game = state.game
    sport = game.sport
    when = datetime.fromtimestamp(game.start_ts, tz)
    league = game.league
    item: dict[str, Any] = {
        "id": game.id, "date": when.isoformat(), "time": when.strftime("%H:%M"),
        "timestamp": game.start_ts, "timezone": tz_name,
    }
    status: dict[str, Any] = {"long": LONG_NAMES[sport][state.code], "short": state.code}
    league_json = {"id": league.id, "name": league.name, "type": league.type,
                   "season": season_label(sport, league, game.season), "logo": league.logo}
    teams = {"home": team_ref(game.home), "away": team_ref(game.away)}
    if sport == "basketball":
        status["timer"] = _minute_of_period(state)
        item.update(stage=None, week=None, venue=game.home.venue_name, status=status,
                    league=league_json, country=country_v1(league.country), teams=teams,
                    scores=_basketball_scores(state))
    elif sport == "hockey":
        item.update(week=None, timer=_minute_of_period(state), status=status,
                    country=country_v1(league.country), league=league_json, teams=teams)
        item.update(_hockey_scores(state))
    else:
        item.update(week=None, status=status, country=country_v1(league.country),
                    league=league_json, teams=teams, scores=_baseball_scores(state))
    return item


def _minute_of_period(state: GameState) -> str | None:
    seg = state.seg
    if not seg.show_clock or seg.fixed is not None or state.clock_s is None:
        return None
    into = state.clock_s - (seg.period_end_s - seg.period_len_s)
    return str(min(into // 60 + 1, seg.period_len_s // 60))


def _basketball_scores(state: GameState) -> dict[str, Any]:
    game = state.game
    keys = ("quarter_1", "quarter_2", "quarter_3", "quarter_4", "over_time")
    out: dict[str, Any] = {side: dict.fromkeys((*keys, "total")) for side in ("home", "away")}
    if not state.started:
        return out
    if game.awarded is not None:
        out["home"]["total"], out["away"]["total"] = game.awarded
        return out
    happened = state.happened()
    started = state.started_periods()
    for key in keys:
        if (key, -1) in started:
            sums = _side_sums(happened, key)
            out["home"][key], out["away"][key] = sums
    out["home"]["total"], out["away"]["total"] = _side_sums(happened)
    return out


def _hockey_scores(state: GameState) -> dict[str, Any]:
    game = state.game
    keys = ("first", "second", "third", "overtime", "penalties")
    periods: dict[str, str | None] = dict.fromkeys(keys)
    scores: dict[str, int | None] = {"home": None, "away": None}
    if state.started:
        happened = state.happened()
        if game.awarded is not None:
            scores["home"], scores["away"] = game.awarded
        else:
            totals = _side_sums(happened)
            scores["home"], scores["away"] = totals
            started = state.started_periods()
            for key in keys[:4]:
                if (key, -1) in started:
                    home, away = _side_sums(happened, key, kind="goal")
                    periods[key] = f"{home}-{away}"
            if ("penalties", -1) in started:
                shots = [0, 0]
                for event in happened:
                    if event.kind == "shootout" and event.detail == "scored":
                        shots[event.side] += 1
                periods["penalties"] = f"{shots[0]}-{shots[1]}"
    return {"scores": scores, "periods": periods, "events": state.started}


def _baseball_scores(state: GameState) -> dict[str, Any]:
    innings_keys = (*(str(n) for n in range(1, 10)), "extra")
    out: dict[str, Any] = {}
    started = state.started_periods() if state.started else set()
    happened = state.happened()
    for side, name in ((0, "home"), (1, "away")):
        innings: dict[str, int | None] = dict.fromkeys(innings_keys)
        for key in innings_keys:
            if (key, side) in started:
                innings[key] = sum(e.points for e in happened
                                   if e.kind == "run" and e.side == side and e.period == key)
        if state.started:
            out[name] = {
                "hits": sum(1 for e in happened if e.stat == "hits" and e.side == side),
                "errors": sum(1 for e in happened if e.stat == "errors" and e.side == side),
                "innings": innings,
                "total": sum(1 for e in happened if e.kind == "run" and e.side == side),
            }
        else:
            out[name] = {"hits": None, "errors": None, "innings": innings, "total": None}
    return out


def hockey_event(event: Event, game: Game) -> dict[str, Any]:
    """One item of hockey's `/games/events`."""
    period = {"first": "P1", "second": "P2", "third": "P3", "overtime": "OT"}[event.period]
    minute = (event.clock_s % (20 * 60)) // 60 if event.period != "overtime" \
        else (event.clock_s - 60 * 60) // 60
    team = game.home if event.side == 0 else game.away
    return {
        "game_id": game.id, "period": period, "minute": f"{minute:02d}",
        "team": team_ref(team),
        "players": [event.player.name] if event.player else [],
        "assists": [p.name for p in (event.assist, event.assist2) if p is not None],
        "comment": event.comment, "type": event.kind,
    }


# --- American football ------------------------------------------------------------


def _american_football(state: GameState, tz_name: str, tz: tzinfo) -> dict[str, Any]:
    game = state.game
    seg = state.seg
    when = datetime.fromtimestamp(game.start_ts, tz)
    timer = None
    if seg.show_clock and state.clock_s is not None and seg.fixed is None:
        left = max(0, seg.period_end_s - state.clock_s)
        timer = f"{left // 60:02d}:{left % 60:02d}"
    keys = ("quarter_1", "quarter_2", "quarter_3", "quarter_4", "overtime")
    scores: dict[str, Any] = {side: dict.fromkeys((*keys, "total")) for side in ("home", "away")}
    if state.started:
        happened = state.happened()
        started = state.started_periods()
        for key in keys:
            if (key, -1) in started:
                scores["home"][key], scores["away"][key] = _side_sums(happened, key)
        scores["home"]["total"], scores["away"]["total"] = _side_sums(happened)
    league = game.league
    return {
        "game": {
            "id": game.id, "stage": "Regular Season", "week": game.round,
            "date": {"timezone": tz_name, "date": when.strftime("%Y-%m-%d"),
                     "time": when.strftime("%H:%M"), "timestamp": game.start_ts},
            "venue": {"name": game.home.venue_name, "city": game.home.city},
            "status": {"short": seg.code, "long": LONG_NAMES["american-football"][seg.code],
                       "timer": timer},
        },
        "league": {"id": league.id, "name": league.name,
                   "season": season_label("american-football", league, game.season),
                   "logo": league.logo,
                   "country": {"name": league.country.name, "code": league.country.code,
                               "flag": league.country.flag}},
        "teams": {"home": team_ref(game.home), "away": team_ref(game.away)},
        "scores": scores,
    }

