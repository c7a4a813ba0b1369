"""Which items get a gold label: the conflict split, the baselines' selections and the Stage-1 targets."""
