"""What people and programs call: submit, cancel, read, export, retry, tasks.

The CLI and the top-level `jobsys` package call these; nothing here starts a process.
"""
