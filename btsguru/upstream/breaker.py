"""The circuit breaker in front of each sport's upstream host.

Sits inside `UpstreamClient.fetch`, before the quota governor: when a host keeps failing
(timeouts, connection errors, 5xx, garbage), asking it again only burns quota and makes
users wait, so the breaker fails calls at once until a cool-down has passed.

States per sport:
- closed: calls go through; `failure_threshold` consecutive host failures open it.
- open: every call raises `CircuitOpen` at once (no quota token taken, nothing sent)
  until the cool-down ends.
- half-open: the first call after the cool-down is let through as the one probe; the
  others still get `CircuitOpen`. The probe's success closes the breaker (and resets the
  cool-down); its failure re-opens it with the cool-down doubled, up to `max_cooldown_s`.

Scheduled calls (the pollers', `before_call(sport, scheduled=True)`) may be the probe
even during the cool-down, one in flight at a time: a poller asks at its own cadence,
which already bounds what it spends, and it must find the host back within one cadence
of its return, not at the end of a cool-down. Its success closes the breaker for every
caller; its failure re-opens it for the cool-down in force, not doubled (the doubling
only spaces out the probes of callers that have no schedule: users' cache misses). So
while the pollers keep probing, users' misses get `CircuitOpen` at once and spend
nothing, and are let through again as soon as a poll finds the host healthy.

The state is in-process, per `UpstreamClient`: each process learns the host's health
from its own calls. That is deliberate: it costs no Redis round trip per call, a process
that cannot reach the host is exactly the one that should stop trying, and the cluster-
wide protection of the quota is the governor's job, not this one's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from btsguru.clock import Clock
from btsguru.upstream.errors import CircuitOpen

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]

# A half-open breaker whose probe is in flight asks the others to come back this soon:
# the probe's verdict is at most one request timeout away.
PROBE_RETRY_AFTER_S = 1


@dataclass
class _Circuit:
    failures: int = 0           # consecutive host failures while closed
    opened_until: float = 0.0   # monotonic deadline of the current cool-down; 0 = closed
    cooldown_s: float = 0.0     # the cool-down used the last time it opened
    probing: bool = False       # a half-open probe is in flight
    early_probe: bool = False   # ...let through during the cool-down (a scheduled call)


class CircuitBreaker:
    """Per-sport circuit breakers (see the module docstring). Not thread-safe: it lives on
    one event loop, and no method awaits, so no two calls interleave inside one."""

    def __init__(self, clock: Clock, *, failure_threshold: int = 5, cooldown_s: float = 15.0,
                 max_cooldown_s: float = 300.0) -> None:
        if failure_threshold < 1 or cooldown_s <= 0 or max_cooldown_s < cooldown_s:
            raise ValueError("breaker: failure_threshold >= 1 and "
                             "0 < cooldown_s <= max_cooldown_s are required")
        self._clock = clock
        self.failure_threshold = failure_threshold
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._circuits: dict[str, _Circuit] = {}

    def _circuit(self, sport: str) -> _Circuit:
        return self._circuits.setdefault(sport, _Circuit())

    def state(self, sport: str) -> BreakerState:
        """The sport's state now (for ops and metrics); an open breaker whose cool-down has
        passed reads as half-open."""
        circuit = self._circuit(sport)
        if circuit.opened_until == 0.0:
            return "closed"
        if circuit.probing or self._clock.monotonic() >= circuit.opened_until:
            return "half_open"
        return "open"

    def retry_after_s(self, sport: str) -> float:
        """Seconds until the breaker will let a call through (0 when it would now)."""
        circuit = self._circuit(sport)
        if circuit.opened_until == 0.0:
            return 0.0
        if circuit.probing:
            return float(PROBE_RETRY_AFTER_S)
        return max(0.0, circuit.opened_until - self._clock.monotonic())

    def before_call(self, sport: str, *, scheduled: bool = False) -> None:
        """Let a call through or raise `CircuitOpen`. A half-open breaker lets exactly one
        caller through as the probe, and an open one a `scheduled` caller (a poller) when
        no probe is in flight; that caller must then report `record_success`,
        `record_failure` or `release`."""
        circuit = self._circuit(sport)
        if circuit.opened_until == 0.0:
            return
        wait_s = self.retry_after_s(sport)
        if circuit.probing or (wait_s > 0 and not scheduled):
            raise CircuitOpen(
                f"{sport}: the upstream is failing; calls are paused for {wait_s:.0f} s "
                f"(circuit breaker open)", sport=sport, retry_after_s=max(1, round(wait_s)))
        circuit.probing = True
        circuit.early_probe = wait_s > 0
        # a poll probing at its cadence is routine while the host fails: not news
        log.log(logging.DEBUG if circuit.early_probe else logging.INFO,
                "upstream %s: circuit half-open, sending one probe", sport)

    def record_success(self, sport: str) -> None:
        """The upstream host answered (even with a refusal): close the breaker."""
        circuit = self._circuit(sport)
        if circuit.opened_until != 0.0:
            log.info("upstream %s: circuit closed, the probe succeeded", sport)
        self._circuits[sport] = _Circuit()

    def record_failure(self, sport: str) -> None:
        """A host failure (timeout, connection, 5xx, garbage)."""
        circuit = self._circuit(sport)
        if circuit.probing:
            circuit.probing = False
            if circuit.early_probe:  # still failing: open as it was, from now
                self._open(sport, circuit, "a scheduled probe failed", level=logging.DEBUG)
                return
            # the cool-down ran out and the host still fails: a longer one
            circuit.cooldown_s = min(self.max_cooldown_s, circuit.cooldown_s * 2)
            self._open(sport, circuit, "the probe failed")
            return
        if circuit.opened_until != 0.0:
            # a call that was let through before the breaker opened, failing late
            return
        circuit.failures += 1
        if circuit.failures >= self.failure_threshold:
            circuit.cooldown_s = self.base_cooldown_s
            self._open(sport, circuit, f"{circuit.failures} failures in a row")

    def release(self, sport: str) -> None:
        """The call let through never reached the upstream (no quota token, cancelled):
        give the probe slot back without a verdict."""
        self._circuit(sport).probing = False

    def _open(self, sport: str, circuit: _Circuit, why: str,
              level: int = logging.WARNING) -> None:
        circuit.opened_until = self._clock.monotonic() + circuit.cooldown_s
        log.log(level, "upstream %s: circuit open for %.0f s (%s)", sport, circuit.cooldown_s,
                why)
