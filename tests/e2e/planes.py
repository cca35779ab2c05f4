"""The local control plane as a test fixture: one way to start it (skip, or fail under
DTLAB_REQUIRE_HEAVY=1, when its binaries or the real-node runtime are missing) and always stop it."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from tests.heavy import require


@contextmanager
def local_plane(tmp_path_factory: Any, nodes: Any, name: str, *, timeout: float = 180,
                real_nodes: Any = None, **up_kw: Any) -> Iterator[dict]:
    """``localplane.up(nodes, <fresh dir>, name=name, ...)`` for a module; ``down`` on exit."""
    from dtlab.kube import localplane as lp

    ok, why = lp.binaries_available()
    require(ok, why)
    if real_nodes:
        from dtlab.kube import realnodes
        missing = realnodes.missing()
        require(missing is None, missing or "")
        up_kw["real_nodes"] = real_nodes
    st = lp.up(nodes, tmp_path_factory.mktemp(f"plane-{name}"), name=name, timeout=timeout, **up_kw)
    try:
        yield st
    finally:
        lp.down(name)


def core_api(plane: dict) -> Any:
    """A CoreV1Api on the plane's kubeconfig (the official client)."""
    from kubernetes import client, config
    return client.CoreV1Api(config.new_client_from_config(config_file=plane["kubeconfig"]))
