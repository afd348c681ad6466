"""The building blocks of a simulated game's life: segments, events and the Builder.

Where it sits: under `scoring` and `football_match` (which play each sport with these)
and `games` (which reads segments and events back at any moment); `render` only reads
the result. A `Segment` is a stretch with one status code and its clock; an `Event`
happens at a simulated second after kick-off; the `Builder` lays segments end to end
and maps game-clock times to those seconds.

Which scenario a slot plays is decided here too: one slot in four is a special one,
cycling through every unusual path of its sport (extra time, shoot-outs, suspensions,
postponements, awards...), so a few hours of the schedule show every status code the
upstream can send.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from btsguru.simulator.catalog import Player

PRE_START_S = -10**9  # the first segment (NS, TBD) starts "forever" before kick-off
MIN = 60

# Sim seconds per game-clock second: play stops (fouls, time-outs, reviews), so a game
# takes longer than its clock, as in real life.
STRETCH: dict[str, float] = {
    "football": 1.0, "basketball": 2.0, "hockey": 1.5, "baseball": 1.0,
    "american-football": 3.0,
}

SPECIALS: dict[str, tuple[str, ...]] = {
    "football": ("aet", "pen", "susp", "int", "pst", "canc", "abd", "awd", "wo", "tbd"),
    "basketball": ("ot", "post", "canc", "susp", "awd", "abd"),
    "hockey": ("aot", "ap", "post", "canc", "intr", "abd", "aw"),
    "baseball": ("extras", "post", "canc", "intr", "abd"),
    "american-football": ("aot", "canc", "pst"),
}
SPECIAL_EVERY = 4  # one slot in four


def scenario_for(sport: str, slot: int, seed: int) -> str:
    if slot % SPECIAL_EVERY != 2:
        return "normal"
    specials = SPECIALS[sport]
    return specials[(slot // SPECIAL_EVERY + seed) % len(specials)]


@dataclass(frozen=True, slots=True)
class Segment:
    """One stretch of a game's life with a single status code.

    `period` is the scoring period its events count in (None while the ball is dead);
    `batting` is the side at bat (baseball; -1 elsewhere). The game clock shows
    `clock_s` at the segment's start and runs when `running`; `period_end_s` and
    `period_len_s` place that clock within its period (for minutes like "45+2" and
    countdown timers). `fixed` is a clock value shown instead (football's 45 at HT).
    """

    start_s: int
    code: str
    period: str | None = None
    batting: int = -1
    clock_s: int = 0
    running: bool = False
    period_end_s: int = 0
    period_len_s: int = 0
    fixed: int | None = None
    show_clock: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happens `t_s` sim seconds after kick-off.

    `side` is the team the upstream shows it under (0 home, 1 away) and `points` what it
    adds to that side's score. `period` is where it counts (football "1H", basketball
    "quarter_2", baseball "7"...). `stat` marks baseball's hits/errors counters.
    """

    t_s: int
    side: int
    kind: str
    detail: str
    points: int
    period: str
    clock_s: int
    player: Player | None = None
    assist: Player | None = None
    assist2: Player | None = None
    comment: str | None = None
    stat: str | None = None


def poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def shootout(rng: random.Random, rounds: int, p_score: float) -> list[bool]:
    """Kicks in order, home first, until decided: whether each one scored."""
    kicks: list[bool] = []
    goals = [0, 0]
    taken = [0, 0]
    while True:
        side = len(kicks) % 2
        # Past 40 kicks, keep it finite: home scores, away misses.
        scored = side == 0 if len(kicks) >= 40 else rng.random() < p_score
        kicks.append(scored)
        goals[side] += scored
        taken[side] += 1
        if taken[0] <= rounds and taken[1] <= rounds:
            if goals[0] + rounds - taken[0] < goals[1] or goals[1] + rounds - taken[1] < goals[0]:
                return kicks
        elif taken[0] == taken[1] and goals[0] != goals[1]:
            return kicks


class Builder:
    """Lays segments end to end and maps game-clock times back to sim seconds."""

    def __init__(self, stretch: float) -> None:
        self.stretch = stretch
        self.t = 0
        self.segments: list[Segment] = []
        # (period, batting, t_start, clock_start, clock_end) of every running stretch
        self.runs: list[tuple[str, int, int, int, int]] = []
        self.ended = False

    def at(self, start_s: int, code: str) -> None:
        self.segments.append(Segment(start_s, code))

    def play(self, code: str, period: str, clock_s: int, length_s: int, period_end_s: int,
             period_len_s: int, *, interrupt: tuple[int, str, int | None] | None = None,
             batting: int = -1, show_clock: bool = True) -> bool:
        """Run the clock from `clock_s` for `length_s`; False if an interruption ended it.

        `interrupt` is (game-clock offset, status code, pause in sim seconds or None
        for an abandonment that ends the game there).
        """
        spans = [(clock_s, length_s)]
        if interrupt is not None:
            at_s, icode, pause_s = interrupt
            spans = [(clock_s, at_s), (clock_s + at_s, length_s - at_s)]
        for index, (start, length) in enumerate(spans):
            self.segments.append(Segment(
                self.t, code, period, batting, start, True, period_end_s, period_len_s,
                None, show_clock))
            self.runs.append((period, batting, self.t, start, start + length))
            self.t += int(length * self.stretch)
            if index == 0 and interrupt is not None:
                self.segments.append(Segment(
                    self.t, icode, None, batting, start + length, False, period_end_s,
                    period_len_s, None, show_clock))
                if pause_s is None:
                    self.ended = True
                    return False
                self.t += pause_s
        return True

    def pause(self, code: str, duration_s: int, *, fixed: int | None = None,
              clock_s: int = 0, period: str | None = None, period_end_s: int = 0,
              period_len_s: int = 0) -> None:
        show = fixed is not None or period_len_s > 0
        self.segments.append(Segment(self.t, code, period, -1, clock_s, False, period_end_s,
                                     period_len_s, fixed, show))
        self.t += duration_s

    def final(self, code: str, fixed: int | None = None) -> None:
        self.segments.append(Segment(self.t, code, None, -1, 0, False, 0, 0, fixed,
                                     fixed is not None))
        self.ended = True

    def time_of(self, period: str, clock_s: int, batting: int = -1) -> int | None:
        """Sim seconds at which the clock of `period` shows `clock_s` (None: never played)."""
        for run_period, run_batting, t0, c0, c1 in self.runs:
            if run_period == period and run_batting == batting and c0 <= clock_s < c1:
                return t0 + int((clock_s - c0) * self.stretch)
        return None


# Statuses announced ahead of a game that will not be played as scheduled.
OFF_FIELD = {"pst": "PST", "post": "POST", "canc": "CANC"}
AWARDED = {"awd": "AWD", "aw": "AW", "wo": "WO"}
AWARD_POINTS = {"football": 3, "basketball": 20, "hockey": 5}  # forfeit scores
