"""Kubernetes side of dtlab: the local control plane (``localplane``), and the actuator,
observer and ``kube`` substrate that act on any API server reached by kubeconfig.

Submodules are imported lazily (``from dtlab.kube import localplane``) so that
importing ``dtlab.kube`` does not pull in the ``kubernetes`` client.
"""
