"""Calibration of the twin against what the substrate observes (:mod:`dtlab.calibration.online`).

Host calibration on the fabric (format factors, fitted links) is :mod:`dtlab.fabric.host_calibration`."""
