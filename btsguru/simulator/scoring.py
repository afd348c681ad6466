"""How each sport's simulated game is played: its periods, breaks and scoring events.

Where it sits: `build_timeline` is called by `games.Schedule` once per game; the
`timelines.Builder` it drives turns periods into status segments and game-clock times
into simulated seconds. Pre-game outcomes (TBD, postponed, cancelled, awarded) are
decided here; football is played in `football_match`, the v1 sports below. Each lays
out its periods for the scenario and draws events at realistic rates (basketball ~100+
points a team, hockey ~3 goals, baseball ~4.5 runs, American football touchdowns and
field goals), forcing the score where the scenario needs it (a tie before overtime, a
walk-off).
"""

from __future__ import annotations

import random

from btsguru.simulator.catalog import League, Team
from btsguru.simulator.football_match import football
from btsguru.simulator.timelines import (
    AWARD_POINTS,
    AWARDED,
    MIN,
    OFF_FIELD,
    PRE_START_S,
    STRETCH,
    Builder,
    Event,
    Segment,
    poisson,
    shootout,
)

Timeline = tuple[list[Segment], list[Event], tuple[int, int] | None]


def build_timeline(sport: str, scenario: str, rng: random.Random, league: League,
                   home: Team, away: Team) -> Timeline:
    """Segments, events and an awarded score for one game's scenario."""
    b = Builder(STRETCH[sport])
    if scenario == "tbd":
        b.at(PRE_START_S, "TBD")
        b.at(-6 * 3600, "NS")  # the kick-off time gets confirmed six hours ahead
    else:
        b.at(PRE_START_S, "NS")
    if scenario in OFF_FIELD:
        b.at(-3 * 3600, OFF_FIELD[scenario])  # announced a few hours ahead
        return b.segments, [], None
    if scenario in AWARDED:
        b.at(10 * MIN, AWARDED[scenario])
        if scenario == "wo":
            return b.segments, [], None
        points = AWARD_POINTS[sport]
        return b.segments, [], ((points, 0) if rng.random() < 0.5 else (0, points))
    play = {
        "football": football, "basketball": basketball, "hockey": hockey,
        "baseball": baseball, "american-football": american_football,
    }[sport]
    events = [e for e in play(b, rng, scenario, league, home, away) if e.t_s >= 0]
    return b.segments, events, None


# --- basketball -------------------------------------------------------------------


def _baskets(rng: random.Random, target: int) -> list[int]:
    plays: list[int] = []
    total = 0
    while total < target:
        roll = rng.random()
        points = 2 if roll < 0.55 else 3 if roll < 0.85 else 1
        points = min(points, target - total)
        plays.append(points)
        total += points
    return plays


# A scenario's periods and its scoring read best in one function.
def basketball(b: Builder, rng: random.Random, scenario: str, league: League, home: Team,  # noqa: PLR0912
               away: Team) -> list[Event]:
    q_len = (league.period_min or 12) * MIN
    mean = 29.0 if q_len == 12 * MIN else 25.0  # ~115 (NBA) and ~100 points a team
    targets = [[max(8, round(rng.gauss(mean, 5))) for _ in range(4)] for _ in range(2)]
    diff = sum(targets[0]) - sum(targets[1])
    if scenario == "ot":  # level after four quarters
        targets[1][3] += diff
        if targets[1][3] < 8:
            targets[0][3] += 8 - targets[1][3]
            targets[1][3] = 8
    elif diff == 0:
        targets[rng.randrange(2)][3] += 1
    overtimes: list[list[int]] = []
    if scenario == "ot":
        for _ in range(2 if rng.random() < 0.2 else 1):
            level = max(4, round(rng.gauss(10, 3)))
            overtimes.append([level, level])
        last = overtimes[-1]
        last[rng.randrange(2)] += rng.randint(1, 6)
    interrupt: tuple[int, str, int | None] | None = None
    cut_quarter = 0
    if scenario in ("susp", "abd"):
        cut_quarter = rng.choice((2, 3))
        pause = 25 * MIN if scenario == "susp" else None
        interrupt = (rng.randrange(MIN, q_len - MIN), "SUSP" if pause else "ABD", pause)
    for q in range(1, 5):
        if not b.play(f"Q{q}", f"quarter_{q}", (q - 1) * q_len, q_len, q * q_len, q_len,
                      interrupt=interrupt if q == cut_quarter else None):
            break
        if q in (1, 3):
            b.pause("BT", 3 * MIN)
        elif q == 2:
            b.pause("HT", 15 * MIN)
    ot_len = 5 * MIN
    if not b.ended:
        for n, _ in enumerate(overtimes):
            start = 4 * q_len + n * ot_len
            b.pause("BT", 3 * MIN)
            b.play("OT", "over_time", start, ot_len, start + ot_len, ot_len)
        b.final("AOT" if overtimes else "FT")
    events: list[Event] = []
    for side in (0, 1):
        spans = [(f"quarter_{q + 1}", q * q_len, targets[side][q]) for q in range(4)]
        spans += [("over_time", 4 * q_len + n * ot_len, ot[side])
                  for n, ot in enumerate(overtimes)]
        for period, start, target in spans:
            length = ot_len if period == "over_time" else q_len
            plays = _baskets(rng, target)
            clocks = sorted(rng.randrange(start + 5, start + length - 2) for _ in plays)
            for points, clock in zip(plays, clocks, strict=True):
                t = b.time_of(period, clock)
                if t is not None:
                    events.append(Event(t, side, "basket", f"{points}pt", points, period,
                                        clock))
    return events


# --- hockey -----------------------------------------------------------------------

_HOCKEY_PENALTIES = ("Tripping", "Hooking", "Slashing", "Roughing", "Interference",
                     "Holding", "High-sticking", "Cross-checking", "Too many men on the ice")


# A scenario's periods and its scoring read best in one function.
def hockey(b: Builder, rng: random.Random, scenario: str, league: League, home: Team,  # noqa: PLR0912
           away: Team) -> list[Event]:
    p_len = 20 * MIN
    ot_len = 5 * MIN
    periods = ("first", "second", "third")
    if scenario in ("aot", "ap"):
        n = poisson(rng, 2.6)
        counts = [n, n]
    else:
        counts = [poisson(rng, 3.1), poisson(rng, 2.8)]
        if counts[0] == counts[1]:
            counts[rng.randrange(2)] += 1
    interrupt: tuple[int, str, int | None] | None = None
    if scenario in ("intr", "abd"):
        pause = 15 * MIN if scenario == "intr" else None
        interrupt = (rng.randrange(2 * MIN, p_len - 2 * MIN), "INTR" if pause else "ABD", pause)
    for index, period in enumerate(periods):
        if not b.play(f"P{index + 1}", period, index * p_len, p_len, (index + 1) * p_len,
                      p_len, interrupt=interrupt if index == 1 else None):
            break
        if index < 2:
            b.pause("BT", 17 * MIN)
    events: list[Event] = []
    teams = (home, away)
    ot_goal_clock = 3 * p_len + rng.randrange(20, ot_len - 10)
    if not b.ended:
        if scenario == "aot":
            b.pause("BT", 4 * MIN)
            b.play("OT", "overtime", 3 * p_len, ot_goal_clock - 3 * p_len + 1,
                   3 * p_len + ot_len, ot_len)
            b.final("AOT")
            winner = rng.randrange(2)
            scorer, *helpers = rng.sample(teams[winner].players[1:], 3)
            t = b.time_of("overtime", ot_goal_clock)
            if t is not None:
                events.append(Event(t, winner, "goal", "Game Winner", 1, "overtime",
                                    ot_goal_clock, scorer, helpers[0], helpers[1]))
        elif scenario == "ap":
            b.pause("BT", 4 * MIN)
            b.play("OT", "overtime", 3 * p_len, ot_len, 3 * p_len + ot_len, ot_len)
            kicks = shootout(rng, rounds=3, p_score=0.33)
            pt_start = b.t
            b.pause("PT", max(6 * MIN, 40 * (len(kicks) + 2)), period="penalties")
            goals = [0, 0]
            for index, scored in enumerate(kicks):
                side = index % 2
                goals[side] += scored
                events.append(Event(pt_start + 40 * (index + 1), side, "shootout",
                                    "scored" if scored else "missed", 0, "penalties",
                                    3 * p_len + ot_len,
                                    rng.choice(teams[side].players[1:])))
            b.final("AP")
            # The shoot-out winner is credited one goal in the final score (NHL style).
            events.append(Event(b.t, 0 if goals[0] > goals[1] else 1, "decider",
                                "Shootout", 1, "penalties", 3 * p_len + ot_len))
        else:
            b.final("FT")
    for side, count in enumerate(counts):
        for _ in range(count):
            index = rng.randrange(3)
            clock = index * p_len + rng.randrange(15, p_len - 5)
            t = b.time_of(periods[index], clock)
            if t is None:
                continue
            scorer, *helpers = rng.sample(teams[side].players[1:], 3)
            n_assists = rng.choice((0, 1, 2, 2, 2))
            events.append(Event(
                t, side, "goal", rng.choice(("Even Strength",) * 6 + ("Power Play",
                                                                       "Short Handed")),
                1, periods[index], clock, scorer,
                helpers[0] if n_assists >= 1 else None,
                helpers[1] if n_assists == 2 else None))
    for _ in range(poisson(rng, 4.5)):
        side = rng.randrange(2)
        index = rng.randrange(3)
        clock = index * p_len + rng.randrange(15, p_len - 5)
        t = b.time_of(periods[index], clock)
        if t is not None:
            events.append(Event(t, side, "penalty", "2 min", 0, periods[index], clock,
                                rng.choice(teams[side].players[1:]),
                                comment=rng.choice(_HOCKEY_PENALTIES)))
    return events


# --- baseball ---------------------------------------------------------------------

HALF_INNING_S = 10 * MIN


# A scenario's periods and its scoring read best in one function.
def baseball(b: Builder, rng: random.Random, scenario: str, league: League, home: Team,  # noqa: PLR0912
             away: Team) -> list[Event]:
    """Half-innings of ten minutes: away bats first (batting 1), then home (batting 0)."""
    events: list[Event] = []
    score = [0, 0]  # home, away
    cut = (rng.randint(3, 7), rng.randrange(2)) if scenario in ("intr", "abd") else None
    half = 0
    inning = 1
    while True:
        for batting in (1, 0):
            if inning >= 9 and batting == 0 and score[0] > score[1]:
                b.final("FT")  # home leads: the bottom half is not played
                return events
            runs = poisson(rng, 0.5)
            walk_off = False
            if inning >= 9 and batting == 1 and scenario == "extras" and inning == 9:
                runs = max(runs, score[0] - score[1])
            if inning >= 9 and batting == 0:
                needed = score[1] - score[0]
                level = scenario == "extras" and inning == 9
                if level:
                    runs = needed
                elif runs > needed or (runs == needed and (scenario != "extras"
                                                           or inning >= 15)):
                    runs = needed + 1
                    walk_off = True
            clock0 = half * HALF_INNING_S
            run_clocks = sorted(rng.randrange(clock0 + 30, clock0 + HALF_INNING_S - 30)
                                for _ in range(runs))
            length = HALF_INNING_S
            if walk_off:
                length = run_clocks[-1] - clock0 + 30
            period = str(inning) if inning <= 9 else "extra"
            code = f"IN{min(inning, 9)}"  # no upstream code exists past the ninth
            interrupt: tuple[int, str, int | None] | None = None
            if cut is not None and cut == (inning, batting):
                pause = 25 * MIN if scenario == "intr" else None
                interrupt = (rng.randrange(60, HALF_INNING_S - 60),
                             "INTR" if pause else "ABD", pause)
            played = b.play(code, period, clock0, length, clock0 + HALF_INNING_S,
                            HALF_INNING_S, interrupt=interrupt, batting=batting,
                            show_clock=False)
            fielding = 1 - batting
            for clock in run_clocks:
                t = b.time_of(period, clock, batting)
                if t is not None:
                    events.append(Event(t, batting, "run", "run", 1, period, clock))
                    score[batting] += 1
            n_hits = runs + poisson(rng, 0.45)
            for _ in range(n_hits):
                clock = rng.randrange(clock0 + 10, clock0 + length - 10)
                t = b.time_of(period, clock, batting)
                if t is not None:
                    events.append(Event(t, batting, "hit", "hit", 1, period, clock,
                                        stat="hits"))
            if rng.random() < 0.065:
                clock = rng.randrange(clock0 + 10, clock0 + length - 10)
                t = b.time_of(period, clock, batting)
                if t is not None:
                    events.append(Event(t, fielding, "error", "error", 1, period, clock,
                                        stat="errors"))
            half += 1
            if not played:
                return events
            if walk_off:
                b.final("FT")
                return events
        if inning >= 9 and score[0] != score[1]:
            b.final("FT")
            return events
        inning += 1


# --- American football -----------------------------------------------------------


def _gridiron_plays(rng: random.Random) -> list[int]:
    plays: list[int] = []
    for _ in range(poisson(rng, 2.5)):
        plays.append(6)
        roll = rng.random()
        plays.append(1 if roll < 0.94 else 2 if roll < 0.97 else 0)
    plays += [3] * poisson(rng, 1.7)
    if rng.random() < 0.03:
        plays.append(-2)  # a safety, scored by the other side; sign marks it
    return plays


# A scenario's periods and its scoring read best in one function.
def american_football(b: Builder, rng: random.Random, scenario: str, league: League,  # noqa: PLR0912
                      home: Team, away: Team) -> list[Event]:
    q_len = 15 * MIN
    ot_len = 10 * MIN
    home_plays = _gridiron_plays(rng)
    away_plays = list(home_plays) if scenario == "aot" else _gridiron_plays(rng)
    for q in range(1, 5):
        b.play(f"Q{q}", f"quarter_{q}", (q - 1) * q_len, q_len, q * q_len, q_len)
        if q in (1, 3):  # change of ends: the clock shows 00:00 for a moment
            b.pause(f"Q{q}", 2 * MIN, clock_s=q * q_len, period_end_s=q * q_len,
                    period_len_s=q_len)
        elif q == 2:
            b.pause("HT", 15 * MIN)
    events: list[Event] = []
    totals = [0, 0]
    for side, plays in enumerate((home_plays, away_plays)):
        clock = 0
        for points in plays:
            if points in (1, 2) and events and events[-1].side == side:
                clock = min(clock + 40, 4 * q_len - 1)  # the try right after the touchdown
            elif points != 0:
                clock = rng.randrange(30, 4 * q_len - 30)
            if points == 0:
                continue
            scorer = side if points > 0 else 1 - side
            value = abs(points)
            quarter = min(4, clock // q_len + 1)
            t = b.time_of(f"quarter_{quarter}", clock)
            if t is not None:
                kind = {6: "touchdown", 3: "field goal", 1: "extra point",
                        2: "safety" if points < 0 else "two-point conversion"}[value]
                events.append(Event(t, scorer, kind, kind, value, f"quarter_{quarter}", clock))
                totals[scorer] += value
    if scenario == "aot":
        # Mirrored plays leave the teams level; overtime ends at the first score.
        win_clock = 4 * q_len + rng.randrange(60, ot_len - 60)
        b.play("OT", "overtime", 4 * q_len, win_clock - 4 * q_len + 5, 4 * q_len + ot_len,
               ot_len)
        b.final("AOT")
        side = rng.randrange(2)
        points = 6 if rng.random() < 0.4 else 3
        t = b.time_of("overtime", win_clock)
        if t is not None:
            events.append(Event(t, side, "touchdown" if points == 6 else "field goal",
                                "overtime", points, "overtime", win_clock))
        return events
    if totals[0] == totals[1]:
        side = rng.randrange(2)
        clock = 4 * q_len - 10
        t = b.time_of("quarter_4", clock)
        if t is not None:
            events.append(Event(t, side, "field goal", "field goal", 3, "quarter_4", clock))
    b.final("FT")
    return events
