"""btsguru: a real-time sports data relay in front of API-Sports."""

__version__ = "0.1.0"
