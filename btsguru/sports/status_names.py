"""The long name of every status code each sport's upstream uses, for people: the live
board's legend and tooltips (`BT`, `IN9`, `P3` and `ET` mean little on their own).

Beside the flow: read by the console only. The names follow the upstream's own status
tables (API-Sports' documentation), shortened where its wording is awkward; a test holds
every code of every sport's phase table (`sports.normalize.PHASES`) to a name here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from btsguru.sports.normalize import PHASES

_COMMON: Mapping[str, str] = {
    "NS": "Not started", "TBD": "Time to be defined",
    "HT": "Half-time", "BT": "Break time", "OT": "Overtime",
    "FT": "Finished", "AOT": "Finished after overtime",
    "SUSP": "Suspended", "INT": "Interrupted", "INTR": "Interrupted",
    "POST": "Postponed", "PST": "Postponed", "CANC": "Cancelled", "ABD": "Abandoned",
    "AWD": "Awarded", "AW": "Awarded", "WO": "Walkover", "LIVE": "In play",
}

_NAMES: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "football": MappingProxyType({
        **_COMMON, "1H": "First half", "2H": "Second half", "ET": "Extra time",
        "BT": "Break time (before or during extra time)", "P": "Penalty shoot-out",
        "AET": "Finished after extra time", "PEN": "Finished after the shoot-out",
        "AWD": "Technical loss",
    }),
    "basketball": MappingProxyType({
        **_COMMON, **{f"Q{n}": f"Quarter {n}" for n in range(1, 5)},
    }),
    "hockey": MappingProxyType({
        **_COMMON, **{f"P{n}": f"Period {n}" for n in range(1, 4)},
        "PT": "Penalty shoot-out", "BT": "Break time (between periods)",
        "AP": "Finished after the shoot-out",
    }),
    "baseball": MappingProxyType({
        **_COMMON, **{f"IN{n}": f"Inning {n}" for n in range(1, 10)},
    }),
    "american-football": MappingProxyType({
        **_COMMON, **{f"Q{n}": f"Quarter {n}" for n in range(1, 5)},
    }),
})


# each sport's own codes only (its phase table's), in that table's order: the legend
STATUS_NAMES: Mapping[str, Mapping[str, str]] = MappingProxyType({
    sport: MappingProxyType({code: _NAMES[sport].get(code, code) for code in phases})
    for sport, phases in PHASES.items()})


def status_name(sport: str, code: str) -> str:
    """The long name of `code`, or the code itself when the upstream sent a new one."""
    return STATUS_NAMES.get(sport, {}).get(code, code)
