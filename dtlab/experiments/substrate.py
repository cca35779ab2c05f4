"""Which substrate an experiment runs on: ``substrate: auto`` resolved, fabric sizes applied, opened.

``auto`` means "the fabric when this host can run it, else sim" (the rule itself is
:func:`dtlab.substrates.pick`); an explicit ``fabric`` that cannot run here is an error before
any work. On the fabric the twin plans with this host's calibrated timing
(:func:`dtlab.fabric.host_calibration.host_timing`) and fitted links.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .. import substrates
from ..errors import SpecError, SubstrateUnavailable
from ..model import Cluster
from ..strict_json import short
from ..substrates.base import Substrate
from ..timing import TimingModel
from .params import validate


SUBSTRATE_DEFAULTS: dict[str, Any] = {
    "substrate": "sim",
    "substrate_opts": {},
    "cluster": "examples/cluster-hetero.yaml",
}
AUTO = "auto"


def auto_substrate_defaults(fabric_sizes: Mapping[str, Any]) -> dict[str, Any]:
    """Substrate parameters of an experiment that prefers real execution (V1-V3).

    ``substrate: auto`` resolves to ``fabric`` when :func:`dtlab.substrates.pick` says this host
    can run it, else to ``sim`` with the reason in ``substrate_note``. ``fabric`` maps parameter
    names to the sizes used when the run lands on the fabric: fabric runs take wall-clock time, so
    the full sim sizes would not fit ``make experiments``' budget. ``fabric: {}`` runs the top-level
    sizes on the fabric as well.
    """
    return {**SUBSTRATE_DEFAULTS, "substrate": AUTO, "fabric": dict(fabric_sizes)}


@dataclass
class SubstrateChoice:
    """Which substrate a run asked for, which one it got and why; the twin's timing on that substrate.

    ``metadata`` is filled by :func:`open_substrate` from the first real substrate opened (the
    fabric's cgroup version, scale, link-shaping mechanism per link ...), for run.json.
    """
    requested: str
    name: str
    note: str = ""
    timing: TimingModel | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    opened: list[Substrate] = field(default_factory=list)      # wall-clock substrates opened (their host noise)

    network: dict[str, Any] | None = None      # the fitted link calibration the twin uses (fabric)
    network_path: str = ""
    startup: dict[str, Any] | None = None      # the start-up calibration the twin uses (fabric)
    startup_path: str = ""
    startup_used: dict[str, float] = field(default_factory=dict)    # format -> ms (reference) the twin used
    dispatch_used: float = 0.0
    quota_used: dict[str, dict[str, float]] = field(default_factory=dict)   # node -> {cpu: CFS period ms (reference)}

    def with_startup(self, timing: TimingModel, sub: Any) -> TimingModel:
        """``timing`` with the start-up per format this substrate pays, in ``sub``'s reference ms
        (wall / time_scale), and on the fabric the stages' CFS quotas (:class:`dtlab.timing.CpuQuota`,
        from the fabric's own settings: recorded as ``calibration.cpu_quota_period_ms``, not measured);
        elsewhere ``timing`` unchanged. Start-up on the fabric: measured on this host's
        fabric launch path with the dispatch delay
        (:func:`dtlab.fabric.host_calibration.startup_calibration`); on kube with real nodes: pod create ->
        worker start of real pods (:func:`dtlab.kube.startup.startup_calibration`; KWOK-only clusters keep
        none, their delays are annotated), and the same pods' emulation factor per real node divides its
        speed in the twin (``sub.set_emulation``; run.json ``substrate_metadata.emulation_factors``). Both are measured once per worker build and cached. A failed
        measurement leaves start-up unmodelled and says so in the note."""
        if timing is None or self.name not in ("fabric", "kube"):
            return timing
        cpu_quota = getattr(sub, "cpu_quota", None)
        if self.name == "fabric" and callable(cpu_quota):   # each stage's CFS quota hands out CPU per period
            quota = cpu_quota()
            timing = timing.with_cpu_quota(quota)
            self.quota_used = quota.describe((1.0, 2.0))
        if self.name == "kube" and not (getattr(sub, "real_nodes", None) and sub.real_nodes()):
            return timing
        from ..fabric import calibrate
        if self.startup is None:
            try:
                if self.name == "kube":
                    from ..kube import startup as kube_startup
                    self.startup, path = kube_startup.startup_calibration(sub.cluster(),
                                                                          kubeconfig=getattr(sub, "kubeconfig", None))
                else:
                    from ..fabric import host_calibration as host
                    self.startup, path = host.startup_calibration()
                self.startup_path = str(path)
            except Exception as exc:  # noqa: BLE001 - run without start-up, say so
                self.startup = {}
                self.note = "; ".join(x for x in (self.note, f"start-up calibration failed ({exc}); not modelled") if x)
        emulate = getattr(sub, "set_emulation", None)
        if self.name == "kube" and callable(emulate):
            # the same pods measured each real node's emulation factor: the twin's speeds (node-add)
            factors = emulate(self.startup)
            if self.metadata.get("substrate") == "kube" and not self.metadata.get("emulation_factors"):
                self.metadata["emulation_factors"] = {n: dict(v) for n, v in factors.items()}
        if not self.startup:
            return timing
        scale = getattr(sub, "time_scale", None) or getattr(sub, "opts", {}).get("time_scale", 1.0)
        self.startup_used = {k: round(v, 3) for k, v in calibrate.startup_ms(self.startup, scale).items()}
        self.dispatch_used = round(calibrate.dispatch_ms(self.startup, scale), 3)
        return timing.with_startup(self.startup_used, self.dispatch_used)

    def calibration(self) -> dict[str, Any]:
        """Which calibrations the twin ran with (recorded in metrics and run.json): compute (format
        factors), network (fitted links), startup (per format, and the ms the twin used)."""
        out: dict[str, Any] = {}
        if self.name != "fabric":
            out["compute"] = "none: twin default timing"
            if self.startup:      # kube with real nodes: start-up of real pods, the stage hand-off lag
                out["startup"] = f"{self.startup_path} (created {self.startup.get('created')}, kube real nodes)"
                out["startup_ms"] = dict(self.startup_used)
                out["dispatch_ms"] = self.dispatch_used
            return out
        from ..fabric import calibrate
        try:
            doc = calibrate.load()
            out["compute"] = f"{calibrate.default_out()} (created {doc.get('created')}, quick={doc.get('quick')})"
        except Exception as exc:  # noqa: BLE001 - report, do not fail the run
            out["compute"] = f"defaults ({type(exc).__name__}: {exc})"
        if self.network:
            out["network"] = f"{self.network_path} (created {self.network.get('created')})"
        if self.startup:
            out["startup"] = f"{self.startup_path} (created {self.startup.get('created')})"
            out["startup_ms"] = dict(self.startup_used)
            out["dispatch_ms"] = self.dispatch_used
        if self.quota_used:    # not measured: the fabric's own quota settings (dtlab.timing.CpuQuota)
            out["cpu_quota_period_ms"] = {n: dict(v) for n, v in self.quota_used.items()}
        return out

    def link_events(self, cluster: Cluster) -> list[dict[str, Any]]:
        """On the fabric: state events giving the twin the links measured and fitted on this host
        (:func:`dtlab.fabric.host_calibration.network_calibration`, measured once per link set and cached);
        elsewhere none. A failed measurement leaves the spec links and says so in the note."""
        if self.name != "fabric":
            return []
        from ..fabric import host_calibration as host
        from ..fabric import calibrate
        if self.network is None:
            try:
                self.network, path = host.network_calibration(cluster)
                self.network_path = str(path)
            except Exception as exc:  # noqa: BLE001 - run with the spec links, say so
                self.network = {}
                self.note = "; ".join(x for x in (self.note, f"network calibration failed ({exc}); spec links") if x)
        return calibrate.link_events(self.network)

    def metrics(self) -> dict[str, Any]:
        """The result-metric keys every V1-V3 run carries (the runner copies them into run.json);
        on a wall-clock substrate also ``host_noise`` (dtlab/hostnoise.py, worst case over the
        substrates the run opened) and ``host_noise.noisy``."""
        out: dict[str, Any] = {"substrate": self.name, "substrate_requested": self.requested,
                               "substrate_note": self.note}
        if self.network:
            out["network_calibration"] = f"{self.network_path} (created {self.network.get('created')})"
        out["calibration"] = self.calibration()
        if self.metadata:
            out["substrate_metadata"] = dict(self.metadata)
        records = [getattr(sub, "noise", None) for sub in self.opened]
        if any(records):
            from ..hostnoise import combine
            noise = combine([r for r in records if r])
            out["host_noise"] = noise
            out["host_noise.noisy"] = noise["noisy"]
        return out


def choose_substrate(requested: str) -> SubstrateChoice:
    """Resolve ``auto`` (:func:`dtlab.substrates.pick`: fabric if available, else sim with the
    reason); an explicit ``fabric`` that cannot run here is a :class:`SubstrateUnavailable` naming
    what is missing. On the fabric the twin gets this host's calibrated timing."""
    from ..fabric import host_calibration as host

    known = [AUTO, *substrates.names()]
    if requested not in known:
        raise SpecError("substrate", f"unknown substrate {short(requested)} (known: {known})")
    if requested not in (AUTO, "fabric"):
        return SubstrateChoice(requested, requested)
    if requested == "fabric":
        _require_fabric()
        name, note = "fabric", ""
    else:
        name, note = substrates.pick("fabric", fallback="sim")
    if name != "fabric":
        return SubstrateChoice(requested, name, note)
    timing, note = host.host_timing()
    return SubstrateChoice(requested, "fabric", note, timing)


def _require_fabric() -> None:
    """An explicit ``substrate: fabric`` that this host cannot run: the error naming what is missing."""
    ok, why = substrates.available("fabric")
    if not ok:
        raise SubstrateUnavailable(f"substrate 'fabric' was requested but cannot run on this host: {why} "
                                   "(substrate: auto falls back to sim)")


def check_params(params: Mapping[str, Any] | None, defaults: Mapping[str, Any], experiment: str
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(validated params, validated params with the ``fabric`` sizes applied), without running or
    calibrating anything: what the runner checks before a kernel starts (an explicit ``fabric``
    that cannot run here is a :class:`SubstrateUnavailable` already then)."""
    p = validate(params, defaults, experiment)
    sizes = dict(p.get("fabric") or {})
    for key in sizes:
        if key not in defaults or key in ("substrate", "fabric"):
            allowed = sorted(k for k in defaults if k not in ("substrate", "fabric"))
            raise SpecError(f"fabric.{key}", f"not a parameter {experiment} can size on the fabric (known: {allowed})")
    try:
        sized = validate({**p, **sizes}, defaults, experiment)
    except SpecError as exc:
        raise SpecError(f"fabric.{exc.field}", exc.rule) from None
    if p.get("substrate") == "fabric":
        _require_fabric()
    return p, sized


def resolve(params: Mapping[str, Any] | None, defaults: Mapping[str, Any], experiment: str
            ) -> tuple[dict[str, Any], SubstrateChoice]:
    """Validated params with the substrate resolved (``p["substrate"]`` is the one that runs) and,
    on the fabric, the ``fabric`` size overrides applied; plus the :class:`SubstrateChoice`."""
    p, checked = check_params(params, defaults, experiment)
    sizes = dict(p.get("fabric") or {})
    choice = choose_substrate(p["substrate"])
    if choice.name == "fabric" and sizes:
        p = checked
        applied = ", ".join(f"{k}={v}" for k, v in sizes.items())
        choice.note = "; ".join(x for x in (choice.note, f"fabric sizes: {applied}") if x)
    p["substrate"] = choice.name
    return p, choice


def open_substrate(params: Mapping[str, Any], cluster: Cluster, seed: int,
                   choice: SubstrateChoice | None = None, **extra: Any) -> Substrate:
    """The run's substrate (params ``substrate``, ``substrate_opts``) seeded for one seed.

    With a ``choice`` on the fabric, the substrate chooses formats with the same (host-calibrated)
    timing as the twin; on the fabric and kube the first substrate's ``metadata()`` is kept in
    ``choice.metadata`` (the run's ``substrate_metadata``: isolation, shared-host slowdown, links).
    """
    opts = {**dict(params.get("substrate_opts") or {}), **extra}
    if choice is not None and params["substrate"] == "fabric" and choice.timing is not None:
        opts.setdefault("timing", choice.timing)
    sub = substrates.make_substrate(params["substrate"], cluster, seed=seed, **opts)
    if choice is not None and hasattr(sub, "noise"):
        choice.opened.append(sub)          # its host noise is read after it closed (SubstrateChoice.metrics)
    if choice is not None and not choice.metadata and params["substrate"] in ("fabric", "kube"):
        meta = getattr(sub, "metadata", None)
        if callable(meta):
            choice.metadata = dict(meta())
    return sub
