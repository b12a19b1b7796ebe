"""Coded-step schedules and the per-model rate/MSE profile (calibration) they are derived from."""
