"""The chaos suite: real faults while real jobs run, then invariants over the history.

Run ``python -m tests.chaos --seconds 600 --seed 7`` (``make chaos``; ``make
chaos SEED=n`` replays a run), or the short version inside ``make test``
(tests/test_chaos.py). A run starts its OWN NATS, Redis and Postgres on free
ports (so restarting them disturbs nobody), runs workers, processors and the
reconcile scheduler as subprocesses (each restarted when it dies, as a
Procfile runner would), submits a mix of jobs, injects faults at random
moments from a printed seed, then checks every invariant.

| module | what it holds |
|---|---|
| `servers.py` | `PrivateServers`: the run's own NATS, Redis and Postgres |
| `mix.py` | the job mix (profiles, odd values, poison and hung tasks); how each task must end |
| `faults.py` | the fault kinds, their order, the outages (Postgres stalled, workers stopped) |
| `check.py` | the invariants over the history |
| `report.py` | the report and its table |
| `run.py` | one run, and `main` (the command line) |
"""

from tests.chaos.faults import FAULTS
from tests.chaos.mix import MIX_KINDS
from tests.chaos.report import Report
from tests.chaos.run import main, run
from tests.chaos.servers import PrivateServers

__all__ = ["FAULTS", "MIX_KINDS", "PrivateServers", "Report", "main", "run"]
