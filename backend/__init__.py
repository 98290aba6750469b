"""The Label Studio face of labelloop: HTTP routes, the model class, per-project state, training queue."""
