"""The twin's discrete-event model on SimPy (virtual time in ms).

``engine.Engine`` is the model; ``sampling.sample_latencies_des`` samples one job's
latency on a snapshot (the ``des`` predictor); ``simulate.simulate`` runs a workload.
Submodules are imported on use so ``import dtlab.des`` stays light.
"""
from .engine import Engine

__all__ = ["Engine"]
