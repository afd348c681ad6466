"""The web console's services: sessions, login throttling, usage and ops reports, and the
SVG charts; the handlers in `btsguru.handlers.console` and `btsguru.handlers.ops` render
them. Every report reads state the relay already keeps (Redis, the database, in-process
counters); the console adds no second source of truth."""
