"""The runner registry: backends by name (``register_runner`` / ``get_runner``)."""

from __future__ import annotations

from collections.abc import Callable

from agentmesh_common import FieldViolation, InvalidArgument

from .base import Backend

__all__ = ["BackendFactory", "BackendRegistry", "default_registry"]

BackendFactory = Callable[[], Backend]


class BackendRegistry:
    """Backend factories by name; each backend is built once, on first use."""

    def __init__(self) -> None:
        self._factories: dict[str, BackendFactory] = {}
        self._built: dict[str, Backend] = {}

    def register_runner(self, name: str, factory: BackendFactory) -> None:
        """Make backend ``name`` available; a later registration replaces an earlier one."""
        self._factories[name] = factory
        self._built.pop(name, None)

    def check(self, name: str) -> None:
        """Raise INVALID_ARGUMENT unless a backend ``name`` is registered (without building
        it: a backend imports its libraries when it is built)."""
        if name not in self._factories:
            known = ", ".join(sorted(self._factories)) or "none"
            raise InvalidArgument(
                f"unknown backend {name!r} (registered: {known})",
                violations=[FieldViolation("backend", f"must be one of: {known}")],
            )

    def get_runner(self, name: str) -> Backend:
        """The backend called ``name`` (INVALID_ARGUMENT if none is registered)."""
        self.check(name)
        if name not in self._built:
            self._built[name] = self._factories[name]()
        return self._built[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._factories))

    def resolve(self, name: str) -> str:
        """``name``, or for ``auto`` the backend suited to this machine: ``mlx`` where MLX has
        a GPU (Metal), else ``cpu`` (numpy), measured many times faster than MLX's CPU path."""
        if name != "auto":
            return name
        import mlx.core as mx

        if mx.default_device().type == mx.DeviceType.gpu or "cpu" not in self._factories:
            return "mlx"
        return "cpu"


def default_registry(*, max_batch: int, prompt_cache_entries: int) -> BackendRegistry:
    """A registry with the backends this build ships: ``mlx`` and ``cpu`` (numpy).

    Each backend's module (MLX, mlx-lm, transformers: about 2 s of imports) is imported when the
    backend is first used, not when the runner starts, so the runner listens sooner and does
    not compete for the CPU with the services starting beside it (issue 16, finding 10)."""

    def mlx() -> Backend:
        from .mlx import MlxBackend

        return MlxBackend(max_batch=max_batch, prompt_cache_entries=prompt_cache_entries)

    def cpu() -> Backend:
        from .cpu import CpuBackend

        return CpuBackend(max_batch=max_batch, prompt_cache_entries=prompt_cache_entries)

    registry = BackendRegistry()
    registry.register_runner("mlx", mlx)
    registry.register_runner("cpu", cpu)
    return registry
