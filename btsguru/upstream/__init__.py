"""The upstream client: the first stage of the flow (API-Sports or the simulator -> pollers).

`UpstreamClient.fetch` is the only way to ask the upstream; `QuotaGovernor` keeps every
process within each sport host's daily and per-minute budget; `CircuitBreaker` stops
asking a failing host (retries are spaced by `btsguru.backoff.Backoff`).
"""

from btsguru.upstream.breaker import BreakerState, CircuitBreaker
from btsguru.upstream.client import (
    UpstreamClient,
    UpstreamResponse,
    auth_headers,
    auth_mode,
    is_rapidapi_host,
)
from btsguru.upstream.errors import (
    CircuitOpen,
    FetchError,
    QuotaExhausted,
    UpstreamAuthError,
    UpstreamFailure,
    UpstreamRequestError,
    classify_answer,
)
from btsguru.upstream.quota import (
    QuotaDecision,
    QuotaGovernor,
    QuotaState,
    QuotaToken,
    RateLimitInfo,
    parse_rate_limits,
)

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "FetchError",
    "QuotaDecision",
    "QuotaExhausted",
    "QuotaGovernor",
    "QuotaState",
    "QuotaToken",
    "RateLimitInfo",
    "UpstreamAuthError",
    "UpstreamClient",
    "UpstreamFailure",
    "UpstreamRequestError",
    "UpstreamResponse",
    "auth_headers",
    "auth_mode",
    "classify_answer",
    "is_rapidapi_host",
    "parse_rate_limits",
]
