"""How a simulated football match is played: halves, extra time, shoot-out and events.

Where it sits: called by `scoring.build_timeline` for football games. Lays out the
periods for the scenario (regulation, an interruption, extra time with its breaks, a
shoot-out) on the `timelines.Builder`, then draws goals (~2.7 a game: normal, penalty,
own goal), cards, a missed penalty, VAR decisions and five substitutions a side.
"""

from __future__ import annotations

import random

from btsguru.simulator.catalog import League, Player, Team
from btsguru.simulator.timelines import MIN, Builder, Event, poisson, shootout

_CARD_REASONS = ("Foul", "Argument", "Time wasting", "Simulation", "Handball", None)


def football(b: Builder, rng: random.Random, scenario: str, league: League, home: Team,
             away: Team) -> list[Event]:
    stop1, stop2, kicks, kicks_start = _football_periods(b, rng, scenario)
    plan = _football_goal_plan(rng, scenario, stop1, stop2)
    events = _football_events(b, rng, plan, stop1, stop2, (home, away))
    takers = (_shootout_takers(rng, home), _shootout_takers(rng, away)) if kicks else ((), ())
    for index, scored in enumerate(kicks):
        side, turn = index % 2, index // 2
        order = takers[side]
        events.append(Event(
            kicks_start + 50 * (index + 1), side, "Goal",
            "Penalty" if scored else "Missed Penalty", 1 if scored else 0,
            "PEN", 120 * MIN, order[turn % len(order)], None, None,
            "Penalty Shootout"))
    return events


def _shootout_takers(rng: random.Random, team: Team) -> tuple[Player, ...]:
    """The order in which a side's eleven on the pitch take their kicks (the goalkeeper
    last): as in the Laws of the Game, nobody kicks twice before all of them have."""
    outfield = list(team.players[1:11])
    rng.shuffle(outfield)
    return (*outfield, team.players[0])


def _football_periods(b: Builder, rng: random.Random,
                      scenario: str) -> tuple[int, int, list[bool], int]:
    """Halves, breaks, extra time and shoot-out: (stoppage 1H, stoppage 2H, kicks, start)."""
    stop1 = rng.randint(1, 4) * MIN + rng.randint(0, 59)
    stop2 = rng.randint(2, 6) * MIN + rng.randint(0, 59)
    stop_half = rng.choice((1, 2))
    interrupt: tuple[int, str, int | None] | None = None
    if scenario in ("int", "susp", "abd"):
        code = {"int": "INT", "susp": "SUSP", "abd": "ABD"}[scenario]
        pause = {"int": 10 * MIN, "susp": 35 * MIN, "abd": None}[scenario]
        interrupt = (rng.randint(10, 40) * MIN + rng.randint(0, 59), code, pause)
    extra_time = scenario in ("aet", "pen")
    h1 = 45 * MIN
    if b.play("1H", "1H", 0, h1 + stop1, h1, h1,
              interrupt=interrupt if stop_half == 1 else None):
        b.pause("HT", 15 * MIN, fixed=45)
        b.play("2H", "2H", h1, h1 + stop2, 2 * h1, h1,
               interrupt=interrupt if stop_half == 2 else None)
    if not b.ended and not extra_time:
        b.final("FT", fixed=90)
    et_stops = (rng.randint(0, 2) * MIN, rng.randint(1, 3) * MIN)
    kicks: list[bool] = []
    kicks_start = 0
    if extra_time:
        b.pause("BT", 5 * MIN, fixed=90)
        b.play("ET", "ET", 90 * MIN, 15 * MIN + et_stops[0], 105 * MIN, 15 * MIN)
        b.pause("BT", 5 * MIN, fixed=105)
        b.play("ET", "ET", 105 * MIN, 15 * MIN + et_stops[1], 120 * MIN, 15 * MIN)
        if scenario == "pen":
            kicks = shootout(rng, rounds=5, p_score=0.76)
            kicks_start = b.t
            b.pause("P", max(8 * MIN, 50 * (len(kicks) + 2)), fixed=120, period="PEN")
            b.final("PEN", fixed=120)
        else:
            b.final("AET", fixed=120)
    return stop1, stop2, kicks, kicks_start


def _football_goal_plan(rng: random.Random, scenario: str, stop1: int,
                        stop2: int) -> list[tuple[int, str, int]]:
    """(side, period, clock) of every goal: level after 90 minutes when extra time follows."""
    h1 = 45 * MIN
    extra_time = scenario in ("aet", "pen")
    if extra_time:
        n = poisson(rng, 1.1)
        counts = [n, n]
    else:
        counts = [poisson(rng, 1.5), poisson(rng, 1.2)]
    plan: list[tuple[int, str, int]] = []  # (side, period, clock)
    for side, count in enumerate(counts):
        for _ in range(count):
            if rng.random() < 0.45:
                plan.append((side, "1H", rng.randrange(60, h1 + stop1)))
            else:
                plan.append((side, "2H", rng.randrange(h1 + 30, 2 * h1 + stop2)))
    if extra_time:
        if scenario == "aet":
            winner = rng.randrange(2)
            plan.append((winner, "ET", rng.randrange(90 * MIN + 30, 120 * MIN)))
            if rng.random() < 0.3:
                plan.append((rng.randrange(2), "ET", rng.randrange(91 * MIN, 119 * MIN)))
                plan.append((winner, "ET", rng.randrange(91 * MIN, 119 * MIN)))
        elif rng.random() < 0.25:
            plan += [(0, "ET", rng.randrange(91 * MIN, 119 * MIN)),
                     (1, "ET", rng.randrange(91 * MIN, 119 * MIN))]
    return plan


def _football_events(b: Builder, rng: random.Random, plan: list[tuple[int, str, int]],
                     stop1: int, stop2: int, teams: tuple[Team, Team]) -> list[Event]:
    """Goals from the plan, then cards, a missed penalty, VAR and substitutions."""
    h1 = 45 * MIN
    events: list[Event] = []

    def place(side: int, kind: str, detail: str, points: int, period: str, clock: int,
              player: Player | None, assist: Player | None = None,
              comment: str | None = None) -> None:
        t = b.time_of(period, clock)
        if t is not None:
            events.append(Event(t, side, kind, detail, points, period, clock, player, assist,
                                None, comment))

    for side, period, clock in plan:
        team, other = teams[side], teams[1 - side]
        roll = rng.random()
        if roll < 0.05:  # the event carries the team the goal counts for
            place(side, "Goal", "Own Goal", 1, period, clock, rng.choice(other.players[1:11]))
        elif roll < 0.15:
            place(side, "Goal", "Penalty", 1, period, clock, rng.choice(team.players[1:11]))
        else:
            scorer, helper = rng.sample(team.players[1:11], 2)
            place(side, "Goal", "Normal Goal", 1, period, clock, scorer,
                  helper if rng.random() < 0.7 else None)
    regulation = [("1H", 60, h1 + stop1), ("2H", h1 + 30, 2 * h1 + stop2)]
    for _ in range(poisson(rng, 3.8)):
        side = rng.randrange(2)
        period, lo, hi = rng.choice(regulation)
        place(side, "Card", "Yellow Card", 0, period, rng.randrange(lo, hi),
              rng.choice(teams[side].players[:16]), comment=rng.choice(_CARD_REASONS))
    if rng.random() < 0.08:
        side = rng.randrange(2)
        place(side, "Card", "Red Card", 0, "2H", rng.randrange(h1 + 60, 2 * h1),
              rng.choice(teams[side].players[1:11]), comment="Serious foul play")
    if rng.random() < 0.07:
        side = rng.randrange(2)
        place(side, "Goal", "Missed Penalty", 0, "2H", rng.randrange(h1 + 60, 2 * h1),
              rng.choice(teams[side].players[1:11]))
    if rng.random() < 0.12:
        side = rng.randrange(2)
        place(side, "Var", "Goal cancelled", 0, "2H", rng.randrange(h1 + 60, 2 * h1),
              rng.choice(teams[side].players[1:11]))
    for side, team in enumerate(teams):
        outs = rng.sample(team.players[1:11], 5)
        clocks = sorted(rng.randrange(55 * MIN, 89 * MIN) for _ in range(5))
        for number, (clock, out, sub_in) in enumerate(zip(clocks, outs, team.players[11:16],
                                                          strict=True), start=1):
            place(side, "subst", f"Substitution {number}", 0, "2H", clock, out, sub_in)
    return events
