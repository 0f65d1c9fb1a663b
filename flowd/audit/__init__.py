"""The read side of the audit trail: views, workflow summaries, retention."""
