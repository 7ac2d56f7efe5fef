"""A job's life in the database: its states and the one guarded transition (`states`),
finishing it (`finalize`), deleting its stream (`teardown`), revoking a
cancelled one (`revoke`) and, long after, pruning its ledger (`retention`)."""
