"""Chaos tests (issue 10): faults injected into a running stack, each test bounded in time;
`CHAOS_LONG=1` runs the longer variants."""
