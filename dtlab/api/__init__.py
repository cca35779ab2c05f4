"""The DT service: REST API over one Twin (plan, observe, snapshot, metrics)."""
from .limits import ApiConfig

__all__ = ["ApiConfig", "create_app"]


def __getattr__(name):
    # Flask is imported on first use only: every `dtlab` command imports dtlab.api.limits (dtlab.cli.serve).
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(name)
