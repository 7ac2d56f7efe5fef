"""Recording outcomes: binding a result to its delivery (`binding`), counting exactly
once (`counting`), and one batch end to end (`apply`). No NATS client here: the
stream lookup is passed in."""
