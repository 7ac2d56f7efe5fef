"""Developer tooling: local servers for `make services`, the tests and the chaos suite.

Never imported by the `jobsys` library (which users install on production
machines): this package pip-installs server packages, may create a system
user and changes folder permissions, all of which belong to a developer's
machine only. Probes and error formatting come from `jobsys.probes`.
"""
