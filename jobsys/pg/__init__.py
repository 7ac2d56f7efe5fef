"""The Postgres adapter: connections (`db`), the named queries (`queries`, from
sql/queries/), per-job locks (`locks`), migrations (`migrate`), the event log (`events`)."""
