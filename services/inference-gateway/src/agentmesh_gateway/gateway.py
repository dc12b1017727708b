"""The gateway core: route a call over its deployments with retries, fallback, circuit
breakers, rate limits, usage, cost and structured-output validation.

The failure policy, in order:
1. retryable errors (connect, timeout, 408/409, 429, 5xx, 529, error events in a stream) are
   retried on the same deployment with exponential backoff and jitter, honouring the
   provider's retry hint when it is short enough; then the next deployment is tried;
2. non-retryable errors fail fast with the provider's reason, except context-length errors,
   which move on to a deployment with a larger context window;
3. a failure after output was streamed either emits ``Restart`` and continues (policy
   RESTART) or ends with an error stating how many tokens were streamed (policy ERROR).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from agentmesh_common import (
    AgentmeshError,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

from .attempts import AttemptState, finish_attempt
from .cache import ResponseCache
from .deployment_views import DeploymentView, Limits, deployment_views
from .domain import (
    AttemptFailed,
    AttemptStarted,
    CacheMode,
    Finished,
    GatewayEvent,
    GenerateCall,
    Locality,
    MidStreamPolicy,
    Restart,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
)
from .errors import HEALTH_KINDS, ErrorKind, UpstreamError, scrub, to_domain_error
from .limits import CircuitBreaker, CircuitState, ProviderBudget, RateWindow
from .observability import GatewayMetrics
from .providers.base import ProviderAdapter, Target
from .routes import Deployment, RouteTable
from .tokens import count_messages
from .validation import validate

_logger = logging.getLogger("agentmesh.gateway")
_CIRCUIT_GAUGE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


@dataclass(frozen=True)
class RetryPolicy:
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_rate_limit_wait: float = 30.0


class Gateway:
    """Serves :meth:`generate` over the deployments of a :class:`RouteTable`."""

    def __init__(
        self,
        table: RouteTable,
        adapters: Mapping[str, ProviderAdapter],
        *,
        metrics: GatewayMetrics,
        tracer: trace.Tracer,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.table = table
        self.cache = cache
        self._adapters = adapters
        self._metrics = metrics
        self._tracer = tracer
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._windows: dict[str, RateWindow] = {}
        self._budgets: dict[str, ProviderBudget] = {}
        self._key_cursor: dict[str, int] = {}
        self._last_error: dict[str, UpstreamError] = {}
        self._tenants: dict[str, RateWindow] = {}
        self._secrets: tuple[str, ...] = tuple(
            key.reveal() for d in table.deployments() for key in d.keys
        )
        for d in table.deployments():
            self._breakers[d.name] = CircuitBreaker(
                table.circuit_failure_threshold, table.circuit_cooldown_seconds, clock
            )
            self._windows[d.name] = RateWindow(d.rpm, d.tpm, clock)
            self._budgets[d.name] = ProviderBudget(clock)
            self._key_cursor[d.name] = 0
            metrics.circuit_state.labels(d.name).set(0)

    # --- routing -------------------------------------------------------------------------

    def resolve(
        self, route: str, provider: str = "", model: str = ""
    ) -> tuple[str, list[Deployment]]:
        """The route name and its deployments for a route, or a provider/model pair."""
        if route:
            deployments = self.table.routes.get(route)
            if deployments is None:
                raise NotFound(f"route {route!r} is not configured", reason="ROUTE_NOT_FOUND")
            return route, list(deployments)
        if provider or model:
            matches = [
                d
                for d in self.table.deployments()
                if (not provider or d.provider == provider) and (not model or d.model == model)
            ]
            if not matches:
                raise NotFound(
                    f"no deployment serves provider {provider!r} model {model!r}",
                    reason="DEPLOYMENT_NOT_FOUND",
                )
            return f"{provider}/{model}", matches
        return self.resolve("default")

    def _order(
        self, deployments: list[Deployment], prefer: Locality | None = None
    ) -> list[Deployment]:
        """By priority, equal priorities shuffled by weight (weighted sampling); with a
        preferred locality, its deployments first (in that order), then the others."""
        ordered: list[Deployment] = []
        for priority in sorted({d.priority for d in deployments}):
            group = [d for d in deployments if d.priority == priority]
            while group:
                pick = self._rng.choices(group, weights=[d.weight for d in group])[0]
                ordered.append(pick)
                group.remove(pick)
        if prefer is not None:
            ordered.sort(key=lambda d: d.locality != prefer.value)  # stable
        return ordered

    def _next_key(self, deployment: Deployment) -> str | None:
        if not deployment.keys:
            return None
        cursor = self._key_cursor[deployment.name]
        self._key_cursor[deployment.name] = cursor + 1
        key: str = deployment.keys[cursor % len(deployment.keys)].reveal()
        return key

    def _backoff(self, retry: int, hint: float | None) -> float:
        delay: float = min(self._retry.max_delay, self._retry.base_delay * 2.0**retry)
        delay *= self._rng.uniform(0.5, 1.0)
        return max(delay, hint or 0.0)

    # --- admission -----------------------------------------------------------------------

    async def _admit_tenant(
        self, call: GenerateCall, tokens: int
    ) -> tuple[RateWindow, list[float]]:
        limits = self.table.tenant_limits(call.tenant)
        window = self._tenants.get(call.tenant)
        if window is None:
            window = self._tenants[call.tenant] = RateWindow(limits.rpm, limits.tpm, self._clock)
        while True:
            entry, wait = window.try_acquire(tokens)
            if entry is not None:
                return window, entry
            if call.fail_fast_on_rate_limit or wait > self._retry.max_rate_limit_wait:
                raise ResourceExhausted(
                    f"tenant {call.tenant or 'anonymous'!r} is over its rate limit",
                    retry_after=round(wait, 3),
                    reason="TENANT_RATE_LIMITED",
                )
            await self._sleep(wait)

    # --- the call ------------------------------------------------------------------------

    async def generate(self, call: GenerateCall) -> AsyncGenerator[GatewayEvent, None]:
        """Stream one call: attempt bookkeeping, deltas, then ``Finished`` (or raise)."""
        validate(call)
        route, deployments = self.resolve(call.route, call.provider, call.model)
        prompt_estimate = count_messages(call.messages, call.tools)
        tenant_window, tenant_entry = await self._admit_tenant(call, prompt_estimate)
        policy = self.table.caches.get(route)
        cache = self.cache
        cache_key = cache.key_for(call, route, policy) if cache is not None else None
        if cache is not None and cache_key is not None and call.cache is CacheMode.DEFAULT:
            answer = await cache.lookup(cache_key, route)
            if answer is not None:
                tenant_window.settle(tenant_entry, 0)  # no provider tokens were used
                for cached_event in answer.events():
                    yield cached_event
                return
        restarted = False  # a restarted answer is never stored
        reserve = prompt_estimate + (call.config.max_tokens or 0)
        attempt = 0
        last: tuple[UpstreamError, Deployment, int] | None = None
        invalid_output_retried = False
        min_context = -1  # after a context-length error: only larger windows
        rate_waits: list[float] = []
        circuit_waits: list[float] = []
        refused: tuple[UpstreamError, Deployment] | None = None  # skipped: its key was refused
        pending_restart = ""
        candidates = self._order(deployments, call.prefer)
        for pass_number in range(2):
            rate_waits.clear()
            for position, deployment in enumerate(candidates):
                if min_context >= 0 and deployment.context_window <= min_context:
                    continue
                breaker = self._breakers[deployment.name]
                if breaker.current_state() is CircuitState.OPEN:
                    circuit_waits.append(breaker.seconds_until_probe())
                    previous = self._last_error.get(deployment.name)
                    if previous is not None and previous.kind is ErrorKind.AUTH:
                        refused = (previous, deployment)
                    continue
                budget = self._budgets[deployment.name]
                provider_wait = budget.wait(reserve)
                if provider_wait > 0:  # its provider said it is spent: route around it
                    rate_waits.append(provider_wait)
                    continue
                window = self._windows[deployment.name]
                entry, wait = window.try_acquire(reserve)
                if entry is None:
                    rate_waits.append(wait)
                    continue
                if not breaker.allow():  # another call holds the half-open probe
                    window.release(entry)
                    circuit_waits.append(breaker.seconds_until_probe())
                    continue
                budget.take(reserve)
                adapter = self._adapters[deployment.provider]
                has_next = position + 1 < len(candidates)
                retry = 0
                keys_failed = 0
                while True:
                    attempt += 1
                    if pending_restart:
                        restarted = True
                        yield Restart(pending_restart, attempt)
                        pending_restart = ""
                    started = AttemptStarted(
                        deployment.provider, deployment.model, deployment.name, attempt
                    )
                    yield started
                    state = AttemptState()
                    recorded: list[Any] | None = [] if cache_key is not None else None
                    try:
                        # aclosing: if our caller goes away, the upstream closes now, not at GC
                        async with aclosing(
                            self._attempt(call, deployment, adapter, attempt, state)
                        ) as attempt_events:
                            async for event in attempt_events:
                                if type(event) is Finished:
                                    assert isinstance(event, Finished)
                                    window.settle(entry, event.usage.total_tokens)
                                    tenant_window.settle(tenant_entry, event.usage.total_tokens)
                                    if cache and cache_key and policy and not restarted:
                                        await cache.store(
                                            cache_key, route, policy, started, recorded or (), event
                                        )
                                    yield event
                                    return
                                if recorded is not None:
                                    recorded.append(event)
                                yield event
                    except UpstreamError as error:
                        streamed_tokens = state.streamed_tokens() if state.streamed else 0
                        self._record_failure(deployment, error)
                        retry += 1
                        hint = error.retry_after
                        same = (
                            error.retryable
                            and retry <= deployment.max_retries
                            and (hint is None or hint <= self.table.max_retry_wait_seconds)
                            and breaker.current_state() is CircuitState.CLOSED
                        )
                        if error.kind is ErrorKind.INVALID_OUTPUT:
                            same = not invalid_output_retried
                            invalid_output_retried = True
                        refused_key = error.kind is ErrorKind.AUTH
                        if refused_key and deployment.keys:
                            # A revoked key among several: the next key may still work.
                            keys_failed += 1
                            same = keys_failed < len(deployment.keys)
                        if refused_key and not same:
                            # Every key of this deployment is refused: that is about this
                            # deployment, not the call. Skip it for the cooldown, fall back.
                            breaker.trip()
                            self._metrics.circuit_state.labels(deployment.name).set(2)
                        context_fallback = error.kind is ErrorKind.CONTEXT_LENGTH and any(
                            d.context_window > deployment.context_window
                            for d in candidates[position + 1 :]
                        )
                        moves_on = (
                            not same
                            and has_next
                            and (
                                (error.retryable and error.kind is not ErrorKind.INVALID_OUTPUT)
                                or context_fallback
                                or refused_key
                            )
                        )
                        stop = not same and not moves_on
                        if state.streamed and call.mid_stream is MidStreamPolicy.ERROR:
                            stop = True
                        yield AttemptFailed(
                            code=error.grpc_code,
                            reason=error.kind.value,
                            message=scrub(error.message, self._secrets),
                            retryable=error.retryable,
                            will_fall_back=moves_on and not stop,
                            attempt=attempt,
                            streamed_tokens=streamed_tokens,
                            deployment=deployment.name,
                            usage=error.usage,
                        )
                        if stop:
                            raise self._final_error(error, deployment, streamed_tokens) from None
                        if state.streamed:
                            pending_restart = (
                                f"{deployment.name} failed after output was streamed: "
                                f"{error.kind.value}"
                            )
                            self._metrics.restarts.labels(route).inc()
                        if same:
                            if error.kind is not ErrorKind.AUTH:  # a new key needs no wait
                                await self._sleep(self._backoff(retry - 1, hint))
                            continue
                        last = (error, deployment, streamed_tokens)
                        if context_fallback:
                            min_context = deployment.context_window
                        self._metrics.fallbacks.labels(route).inc()
                        break
            if not rate_waits or call.fail_fast_on_rate_limit:
                break
            wait = min(rate_waits)
            if wait > self._retry.max_rate_limit_wait or last is not None or pass_number:
                break
            await self._sleep(wait)
        if last is not None:
            raise self._final_error(*last)
        if rate_waits:
            raise ResourceExhausted(
                f"every deployment of route {route!r} is at its rate limit",
                retry_after=round(min(rate_waits), 3),
                reason="DEPLOYMENT_RATE_LIMITED",
            )
        if refused is not None:  # every deployment left was skipped; say why
            raise self._final_error(*refused, 0)
        if circuit_waits:
            raise Unavailable(
                f"every deployment of route {route!r} has an open circuit",
                retry_after=round(min(circuit_waits), 3),
                reason="CIRCUIT_OPEN",
            )
        raise Unavailable(f"no deployment of route {route!r} could serve the call")

    def _final_error(
        self, error: UpstreamError, deployment: Deployment, streamed_tokens: int
    ) -> AgentmeshError:
        if error.kind is ErrorKind.INVALID_OUTPUT:
            return FailedPrecondition(
                f"the model's output did not match the response schema twice: {error.message}",
                reason=error.kind.value,
                metadata={"deployment": deployment.name},
            )
        result = to_domain_error(
            error,
            provider=deployment.provider,
            deployment=deployment.name,
            streamed_tokens=streamed_tokens,
        )
        result.message = scrub(result.message, self._secrets)
        result.args = (result.message,)
        return result

    def _record_failure(self, deployment: Deployment, error: UpstreamError) -> None:
        error.message = scrub(error.message, self._secrets)  # before it is stored or shown
        self._last_error[deployment.name] = error
        self._metrics.errors.labels(deployment.provider, error.kind.value).inc()
        self._metrics.attempts.labels(deployment.provider, "error").inc()
        breaker = self._breakers[deployment.name]
        if error.kind in HEALTH_KINDS:
            breaker.record_failure()
        else:
            breaker.release_probe()
        self._metrics.circuit_state.labels(deployment.name).set(
            _CIRCUIT_GAUGE[breaker.current_state()]
        )
        _logger.warning(
            "attempt failed",
            extra={
                "deployment": deployment.name,
                "provider": deployment.provider,
                "reason": error.kind.value,
                "upstream_status": error.status,
            },
        )

    async def _attempt(
        self,
        call: GenerateCall,
        deployment: Deployment,
        adapter: ProviderAdapter,
        attempt: int,
        state: AttemptState,
    ) -> AsyncGenerator[GatewayEvent, None]:
        provider, model = deployment.provider, deployment.model
        key = self._next_key(deployment)
        span = self._tracer.start_span(
            "gateway.attempt",
            attributes={
                "gen_ai.system": provider,
                "gen_ai.request.model": model,
                "gateway.deployment": deployment.name,
                "gateway.attempt": attempt,
                "agentmesh.session": call.session,
                "agentmesh.agent": call.agent,
                "agentmesh.tenant": call.tenant,
            },
        )
        started = self._clock()
        outcome = "error"
        try:
            if deployment.needs_key and key is None:
                sources = ", ".join(deployment.key_sources) or "api_key_env / api_key_file"
                raise UpstreamError(ErrorKind.AUTH, f"no API key configured ({sources})")
            target = Target(
                provider,
                model,
                deployment.base_url,
                deployment.timeout,
                key,
                deployment.headers,
                deployment.stream,
                trace_context=trace.set_span_in_context(span),
                observe_limits=self._budgets[deployment.name].observe,
            )
            end: StreamEnd | None = None
            text, tools = state.text, state.tools
            async with aclosing(adapter.stream(call, target)) as events:
                async for event in events:
                    kind = type(event)
                    if kind is TextDelta:
                        text.append(event.text)  # type: ignore[union-attr]
                    elif kind is ToolCallDelta:
                        assert isinstance(event, ToolCallDelta)
                        slot = tools.get(event.index)
                        if slot is None:
                            tools[event.index] = [event.id, event.name, [event.arguments_fragment]]
                        else:
                            if event.id and not slot[0]:
                                slot[0] = event.id
                            if event.name and not slot[1]:
                                slot[1] = event.name
                            slot[2].append(event.arguments_fragment)
                    elif kind is StreamEnd:
                        assert isinstance(event, StreamEnd)
                        end = event
                        continue
                    elif kind is not ThinkingDelta:
                        continue
                    if not state.streamed:
                        state.streamed = True
                        state.first_token_at = self._clock()
                        self._metrics.time_to_first_token.labels(provider, model).observe(
                            state.first_token_at - started
                        )
                    yield event
            if end is None:
                raise UpstreamError(ErrorKind.TRUNCATED, f"{provider} stream ended early")
            finished = finish_attempt(call, deployment, state, end, self._metrics)
            span.set_attribute("gen_ai.usage.input_tokens", finished.usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", finished.usage.completion_tokens)
            span.set_attribute("gen_ai.response.finish_reason", finished.finish_reason.value)
            outcome = "ok"
            breaker = self._breakers[deployment.name]
            breaker.record_success()
            self._metrics.circuit_state.labels(deployment.name).set(0)
            self._metrics.attempts.labels(provider, "ok").inc()
            yield finished
        except UpstreamError as error:
            span.set_attribute("gateway.error_reason", error.kind.value)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # Closing the stream after ``finished`` also lands here: that attempt was ok.
            if outcome != "ok":
                outcome = "cancelled"
                self._breakers[deployment.name].release_probe()  # says nothing about health
            raise
        finally:
            span.set_attribute("gateway.outcome", outcome)
            span.end()

    # --- other RPCs ----------------------------------------------------------------------

    def count_tokens(self, call: GenerateCall) -> tuple[int, int]:
        """(estimated prompt tokens, context window of the first deployment or 0)."""
        _, deployments = self.resolve(call.route, call.provider, call.model)
        return count_messages(call.messages, call.tools), deployments[0].context_window

    def status(self, provider: str = "", route: str = "") -> list[DeploymentView]:
        return deployment_views(
            self.table.deployments(),
            Limits(self._breakers, self._windows, self._budgets),
            self._last_error,
            provider=provider,
            route=route,
        )

    def supports_response_schema(self, provider: str) -> bool:
        adapter = self._adapters.get(provider)
        return bool(adapter and adapter.supports_response_schema)
