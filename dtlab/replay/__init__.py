"""Placement replay of real traces: resource fit (CPU, memory, GPU count/share/model) and policies.

``replay_allocation`` follows the FGD paper's methodology on the openb traces (inflate,
no deletions, allocation at every 1 % of arrived GPU demand); ``replay_timed`` replays
creation/deletion times so resources are freed again (for V1/V5 workloads).
"""
from .allocation import COLUMNS, AllocationResult, inflate, plot_allocation, replay_allocation, write_allocation
from .fit import ClusterArrays, Pods
from .published import PUBLISHED_INFLATE, compare_curves, curve_deviation, published_curves, published_final
from .policies import POLICIES, names as policy_names
from .timed import TimedResult, replay_timed, replay_trace

__all__ = ["COLUMNS", "PUBLISHED_INFLATE", "POLICIES", "AllocationResult", "ClusterArrays", "Pods", "inflate", "plot_allocation",
           "policy_names", "replay_allocation", "replay_timed", "replay_trace", "TimedResult",
           "write_allocation", "compare_curves", "curve_deviation", "published_curves", "published_final"]
