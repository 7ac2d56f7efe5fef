"""Starting a job: queued -> started (`start`), and its stream filled with every pending
task (`fill`, also what the reconciler's stream repairs run)."""
