"""The sports btsguru relays; the normalizers (one module per sport) live beside this."""

# The contract's sport names, in the order they are listed everywhere (section 3).
SPORTS: tuple[str, ...] = ("football", "basketball", "hockey", "baseball", "american-football")
