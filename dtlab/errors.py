"""dtlab exceptions: one base class so callers (CLI, API) can turn any of them into a clear message."""


class DtlabError(Exception):
    """Base class of every error dtlab raises on purpose."""


class SpecError(DtlabError, ValueError):
    """Invalid spec or parameter input. ``field`` is the dotted path of the offending field."""

    def __init__(self, field: str, rule: str):
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}" if field else rule)


class InfeasibleError(DtlabError):
    """No placement satisfies a job's constraints on the current cluster state."""


class SubstrateUnavailable(DtlabError):
    """A substrate cannot run here; the message names what is missing."""
