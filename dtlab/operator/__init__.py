"""The DT controller as a Kubernetes operator: DT jobs as ``DTJob`` custom resources.

``crd`` (the CustomResourceDefinition, its manifest and installation), ``spec`` (a DTJob's
spec -> dtlab Job), ``reconciler`` (level-triggered: plan once into status, stage pods from
the recorded plan, advance from pod phases, fail over to the recorded shadow), ``lease``
(leader election on a ``coordination.k8s.io`` Lease), ``cli`` (``dtlab operator`` and
``dtlab submit --operator``). Why an own reconciler and not kopf: ``docs/operator.md``.

Submodules import the ``kubernetes`` client lazily, like :mod:`dtlab.kube`.
"""
