"""What tests need inside jobsys: typed pause points (`pauses`) and the fault-injecting
pipelines (`faults`, run only where JOBSYS_FAULT_PIPELINES allows them).

Nothing here is needed to run jobsys; production code only calls `pauses.pause`,
which does nothing unless a test started the process to pause.
"""
