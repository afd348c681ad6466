"""The pollers: upstream client -> **pollers** -> normalize -> GameStore (diff, seq, bus).

`service.Pollers` is the service (`serve`, `poll`, `refresh`, `record`); `tasks` the work
per sport; `scheduler` runs it under `lease`s; `cadence` decides how often (pure);
`budget` fits it to the day's quota; `state` is what `/v1/sports` and the ops view read.
"""
