"""Resource estimates before launch: peak memory and wall time of rollout and training per protein, from constants
calibrated by `benchmarks/estimate_calibration.py` (`python -m starmd estimate`)."""
