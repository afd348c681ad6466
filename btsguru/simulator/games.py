"""The simulated upstream's games: a rolling schedule and each game's timeline.

Where it sits: below `render` in the simulator. A game is fully decided when it is
built: `scoring` draws, from a RNG seeded by (seed, sport, slot), the list of status
segments it will go through and every event (goal, card, basket, run...) with the
simulated second it happens at. The state at any moment is then a pure function of
(seed, game, simulated elapsed seconds): two binary searches, no per-tick loop, so any
request can ask for any game at any time cheaply and deterministically.

Schedule: per sport, slot k starts at `SCHEDULE_EPOCH + k * interval_s` (real clock)
and belongs to league `k % n_leagues`; the game id is `id_base + k`, so the same game
always has the same id and an id leads straight back to its slot.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime

from btsguru.simulator.catalog import Catalog, League, Team, season_start_year, seeded_rng
from btsguru.simulator.scoring import build_timeline
from btsguru.simulator.timelines import STRETCH, Event, Segment, scenario_for

SCHEDULE_EPOCH = 1704067200  # 2024-01-01T00:00:00Z: slot 0; ids grow from here


@dataclass(frozen=True, slots=True)
class SportSchedule:
    interval_s: int  # between two kick-offs of the sport (leagues take turns)
    id_base: int
    clock_granularity_s: int  # what the upstream's clock shows: minutes, or seconds (AF)
    longest_s: int  # bound on a game's length from kick-off to its final status


# Intervals keep at least three games of each sport live at any moment (a game lasts
# roughly 6-9 intervals and at most one in four slots is a special scenario).
SCHEDULES: dict[str, SportSchedule] = {
    "football": SportSchedule(15 * 60, 1_000_000, 60, 5 * 3600),
    "basketball": SportSchedule(15 * 60, 400_000, 60, 5 * 3600),
    "hockey": SportSchedule(20 * 60, 300_000, 60, 5 * 3600),
    "baseball": SportSchedule(20 * 60, 200_000, 60, 8 * 3600),
    "american-football": SportSchedule(30 * 60, 100_000, 1, 6 * 3600),
}


@dataclass(slots=True)
class Game:
    """One scheduled game with its whole life laid out in simulated seconds from kick-off."""

    sport: str
    id: int
    slot: int
    start_ts: int
    league: League
    season: int  # start year
    round: str
    home: Team
    away: Team
    scenario: str
    segments: tuple[Segment, ...]
    seg_starts: tuple[int, ...]
    events: tuple[Event, ...]
    event_times: tuple[int, ...]
    # A result decided off the field (AWD/WO/AW): (home, away) points, or None.
    awarded: tuple[int, int] | None
    referee: str | None
    first_play_index: int  # the first segment from which scores are numbers
    # Before `first_change_s` and from `settled_s` on nothing changes: those two states
    # are computed once (most games of a day's list are in one of them).
    first_change_s: int = 0
    settled_s: int = 0
    _before: GameState | None = field(default=None, repr=False, compare=False)
    _after: GameState | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.first_change_s = min(self.seg_starts[1] if len(self.seg_starts) > 1 else 2**62,
                                  self.event_times[0] if self.event_times else 2**62)
        self.settled_s = max(self.seg_starts[-1],
                             self.event_times[-1] if self.event_times else -2**62)

    def state_at(self, elapsed_s: int) -> GameState:
        """The game `elapsed_s` simulated seconds after its kick-off time."""
        if elapsed_s >= self.settled_s:
            if self._after is None:
                self._after = self._state_at(elapsed_s)
            return self._after
        if elapsed_s < self.first_change_s:
            if self._before is None:
                self._before = self._state_at(elapsed_s)
            return self._before
        return self._state_at(elapsed_s)

    def _state_at(self, elapsed_s: int) -> GameState:
        index = bisect_right(self.seg_starts, elapsed_s) - 1
        seg = self.segments[index]
        clock: int | None = None
        if seg.show_clock:
            if seg.fixed is not None:
                clock = seg.fixed
            else:
                clock = seg.clock_s
                if seg.running:
                    clock += int((elapsed_s - seg.start_s) / STRETCH[self.sport])
                gran = SCHEDULES[self.sport].clock_granularity_s
                clock -= clock % gran
        n_events = bisect_right(self.event_times, elapsed_s)
        return GameState(self, index, seg, clock, n_events)


@dataclass(frozen=True, slots=True)
class GameState:
    """A game at one moment. `key` changes exactly when its rendering would."""

    game: Game
    seg_index: int
    seg: Segment
    clock_s: int | None
    n_events: int

    @property
    def key(self) -> tuple[int, int | None, int]:
        return (self.seg_index, self.clock_s, self.n_events)

    @property
    def code(self) -> str:
        return self.seg.code

    @property
    def started(self) -> bool:
        """Play has begun, or a result was awarded: scores are numbers from here on."""
        return self.seg_index >= self.game.first_play_index

    def period_done(self, period: str) -> bool:
        """`period` was played to its end (not cut short by an abandonment)."""
        last = -1
        for index, seg in enumerate(self.game.segments):
            if seg.period == period:
                last = index
        if last < 0 or self.seg_index <= last:
            return False
        return self.game.segments[last + 1].code not in ("ABD",)

    def happened(self) -> tuple[Event, ...]:
        return self.game.events[: self.n_events]

    def started_periods(self) -> set[tuple[str, int]]:
        """(period, side) pairs that have begun; side -1 means both sides."""
        out: set[tuple[str, int]] = set()
        for seg in self.game.segments[: self.seg_index + 1]:
            if seg.period is not None:
                out.add((seg.period, seg.batting))
        return out

    def totals(self) -> tuple[int, int]:
        home = away = 0
        for event in self.happened():
            if event.points and event.stat is None and event.period != "PEN":
                if event.side == 0:
                    home += event.points
                else:
                    away += event.points
        return home, away


class Schedule:
    """The rolling schedule of one seed: slot arithmetic plus a bounded cache of games."""

    CACHE_MAX = 30_000  # a few days of every sport; rebuilt lazily after a clear

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._games: dict[tuple[str, int], Game] = {}

    def slots_between(self, sport: str, from_ts: int, to_ts: int) -> range:
        """Slots whose kick-off is in [from_ts, to_ts)."""
        interval = SCHEDULES[sport].interval_s
        first = max(0, -((SCHEDULE_EPOCH - from_ts) // interval))
        last = max(0, -((SCHEDULE_EPOCH - to_ts) // interval))
        return range(first, last)

    def game(self, sport: str, slot: int) -> Game:
        key = (sport, slot)
        game = self._games.get(key)
        if game is None:
            if len(self._games) >= self.CACHE_MAX:
                self._games.clear()
            game = self._build(sport, slot)
            self._games[key] = game
        return game

    def game_by_id(self, sport: str, game_id: int, now_ts: float) -> Game | None:
        sched = SCHEDULES[sport]
        slot = game_id - sched.id_base
        # Ids decades ahead are "unknown" rather than games of a schedule that never ends.
        if slot < 0 or SCHEDULE_EPOCH + slot * sched.interval_s > now_ts + 10 * 366 * 86400:
            return None
        return self.game(sport, slot)

    def games_between(self, sport: str, from_ts: int, to_ts: int) -> list[Game]:
        return [self.game(sport, k) for k in self.slots_between(sport, from_ts, to_ts)]

    def _build(self, sport: str, slot: int) -> Game:
        sched = SCHEDULES[sport]
        leagues = self.catalog.leagues[sport]
        league = leagues[slot % len(leagues)]
        start_ts = SCHEDULE_EPOCH + slot * sched.interval_s
        home, away, matchday = _pairing(self.catalog.seed, sport, league, slot // len(leagues))
        rng = seeded_rng("game", self.catalog.seed, sport, slot)
        scenario = scenario_for(sport, slot, self.catalog.seed)
        segments, events, awarded = build_timeline(sport, scenario, rng, league, home, away)
        first_play = next((i for i, seg in enumerate(segments)
                           if seg.period is not None or (awarded and i > 0
                                                         and seg.code in AWARD_CODES)),
                          len(segments))
        when = datetime.fromtimestamp(start_ts, UTC)
        events_sorted = tuple(sorted(events, key=lambda e: e.t_s))
        return Game(
            sport=sport, id=sched.id_base + slot, slot=slot, start_ts=start_ts, league=league,
            season=season_start_year(league, when.year, when.month),
            round=_round_name(sport, league, matchday), home=home, away=away,
            scenario=scenario, segments=tuple(segments),
            seg_starts=tuple(s.start_s for s in segments), events=events_sorted,
            event_times=tuple(e.t_s for e in events_sorted), awarded=awarded,
            referee=(f"{rng.choice('ABCDEFGHJKLMNPRST')}. {rng.choice(_REFEREES)}"
                     if sport == "football" else None),
            first_play_index=first_play,
        )


AWARD_CODES = frozenset({"AWD", "AW"})  # results decided off the field, with a score

_REFEREES = ("Oliver", "Taylor", "Kavanagh", "Mateu", "Orsato", "Turpin", "Marciniak",
             "Makkelie", "Vincic", "Siebert")


def _pairing(seed: int, sport: str, league: League, league_slot: int) -> tuple[Team, Team, int]:
    """Home and away of a league's n-th slot: round robin over seeded permutations.

    Each "matchday" of n/2 slots pairs every team once, so a team never plays two
    overlapping games.
    """
    teams = league.teams
    per_day = len(teams) // 2
    matchday, pair = divmod(league_slot, per_day)
    order = list(range(len(teams)))
    seeded_rng("pairing", seed, sport, league.id, matchday).shuffle(order)
    return teams[order[2 * pair]], teams[order[2 * pair + 1]], matchday


def _round_name(sport: str, league: League, matchday: int) -> str:
    if sport == "football":
        if league.type == "Cup":
            return ("League Stage - 1", "League Stage - 5", "Round of 16", "Quarter-finals",
                    "Semi-finals")[matchday % 5]
        return f"Regular Season - {matchday % 38 + 1}"
    if sport == "american-football":
        return f"Week {matchday % 18 + 1}"
    return "Regular Season"
