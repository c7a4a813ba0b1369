"""Which items get a gold label and what the students learn from: the conflict split (conflicts), the Stage-1
targets (targets), the teachers' majority vote (majority) and the baselines' training data (baselines)."""
