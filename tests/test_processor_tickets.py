"""A processor keeps serving every job while other jobs finish around it.

Regression: a feed cancelled in the middle of a fetch (its job finished and
its stream was deleted) kept the fetch tickets it held; after a few jobs had
finished no feed could fetch any more and the remaining jobs stalled for ever.
"""

from __future__ import annotations

import jobsys
from jobsys.api.items import counted_items
from jobsys.api.read import wait_until_final


def test_many_small_jobs_all_finish_while_others_finish(system: object) -> None:
    ids = [jobsys.submit("echo", counted_items(10), name=f"t{i}").id for i in range(40)]
    for job_id in ids:
        assert wait_until_final(job_id, timeout=120).status == "success"
