"""Completion hooks: what may be a target (`target`), one delivery attempt (`deliver`),
and the reconciler's resend of overdue ones (`resend`)."""
