"""Calibration of the twin: against what the substrate observes (:mod:`dtlab.calibration.online`) and
against this host's fabric (:mod:`dtlab.calibration.host`: format factors, fitted links)."""
