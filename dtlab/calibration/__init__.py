"""Calibration of the twin against what the substrate observes (:mod:`dtlab.calibration.online`)."""
