"""What GetProviderStatus reports: each deployment's circuit, headroom and last error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import UpstreamError
from .limits import CircuitBreaker, CircuitState, ProviderBudget, RateWindow
from .routes import Deployment

__all__ = ["DeploymentView", "Limits", "deployment_views"]


@dataclass(frozen=True)
class DeploymentView:
    """What ``GetProviderStatus`` reports about one deployment."""

    deployment: Deployment
    circuit: CircuitState
    consecutive_failures: int
    seconds_until_probe: float
    rpm_remaining: int
    tpm_remaining: int
    last_error: UpstreamError | None

    @property
    def credentials_configured(self) -> bool:
        return bool(self.deployment.keys) or not self.deployment.needs_key


@dataclass(frozen=True)
class Limits:
    """The gateway's per-deployment state, by deployment name."""

    breakers: Mapping[str, CircuitBreaker]
    windows: Mapping[str, RateWindow]
    budgets: Mapping[str, ProviderBudget]


def deployment_views(
    deployments: Iterable[Deployment],
    limits: Limits,
    last_errors: Mapping[str, UpstreamError],
    *,
    provider: str = "",
    route: str = "",
) -> list[DeploymentView]:
    """Views of the deployments, of one provider or route when given."""
    views: list[DeploymentView] = []
    for deployment in deployments:
        if provider and deployment.provider != provider:
            continue
        if route and deployment.route != route:
            continue
        breaker = limits.breakers[deployment.name]
        rpm_left, tpm_left = limits.windows[deployment.name].remaining()
        provider_rpm, provider_tpm = limits.budgets[deployment.name].remaining()
        views.append(
            DeploymentView(
                deployment=deployment,
                circuit=breaker.current_state(),
                consecutive_failures=breaker.consecutive_failures,
                seconds_until_probe=breaker.seconds_until_probe(),
                rpm_remaining=_tighter(rpm_left, provider_rpm),
                tpm_remaining=_tighter(tpm_left, provider_tpm),
                last_error=last_errors.get(deployment.name),
            )
        )
    return views


def _tighter(ours: int, providers: int | None) -> int:
    """The smaller of our own headroom (-1: unlimited) and the provider's (None: unknown)."""
    if providers is None:
        return ours
    return providers if ours < 0 else min(ours, providers)
