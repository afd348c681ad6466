"""Accounts beside the data flow: users (`users`), their API keys (`keys`), the tiers
whose limits their keys share (`tiers`) and password hashing (`passwords`).

Every service here reaches the database through a `btsguru.db.runner.DatabaseRunner`
and returns frozen dataclasses, never peewee rows.
"""
