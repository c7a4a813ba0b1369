"""Human labels where the teachers disagree: the annotation queue, Label Studio tasks, and the labels files
that the DAG reads as gold (docs/annotation.md)."""
