"""Evaluation: accuracy and its intervals, thresholds chosen on val, ranking and calibration, reports."""
