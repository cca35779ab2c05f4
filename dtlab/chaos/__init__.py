"""Chaos: one FaultScenario language for sim, fabric and kube, and its Chaos Mesh export.

``spec`` loads/validates scenarios and expands them into concrete timed faults and the
state events the twin sees; ``export`` writes Chaos Mesh manifests; ``realise`` schedules
faults on the SimPy engine.
"""
from .spec import (FAULT_KINDS, Fault, FaultEvent, FaultScenario, NodeSelector, expand,
                   fault_event_from_dict, load_scenario, scenario_from_dict, timeline, to_state_events)

__all__ = ["FAULT_KINDS", "Fault", "FaultEvent", "FaultScenario", "NodeSelector", "expand",
           "fault_event_from_dict", "load_scenario", "scenario_from_dict", "timeline", "to_state_events"]
