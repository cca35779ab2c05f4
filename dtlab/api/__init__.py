"""The DT service: REST API over one Twin (plan, observe, snapshot, metrics)."""
from .app import ApiConfig, create_app

__all__ = ["ApiConfig", "create_app"]
