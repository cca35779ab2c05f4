"""dtlab: a research workbench for digital-twin control of heterogeneous Kubernetes clusters.

The twin (state + predictor + policy) plans jobs; substrates (sim, fabric, kube)
run them; experiments V1-V6 compare what the twin predicted with what happened.
"""
from .errors import DtlabError, InfeasibleError, SpecError, SubstrateUnavailable
from .model import Cluster, Job, Link, Node, Stage, Workload, load_cluster, load_job, load_workload
from .jobfile import load_jobs
from .plan import Plan
from .state import ClusterState, Snapshot
from .timing import TimingModel

__version__ = "0.1.0"

__all__ = [
    "Cluster", "ClusterState", "DtlabError", "InfeasibleError", "Job", "Link", "Node", "Plan",
    "Snapshot", "SpecError", "Stage", "SubstrateUnavailable", "TimingModel", "Twin", "Workload",
    "load_cluster", "load_job", "load_jobs", "load_workload",
]


def __getattr__(name):
    # Twin pulls in the predictors and SimPy; import it on first use to keep `import dtlab` light.
    if name == "Twin":
        from .twin import Twin
        return Twin
    raise AttributeError(name)
