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

    def get_runner(self, name: str) -> Backend:
        """The backend called ``name`` (INVALID_ARGUMENT if none is registered)."""
        if name not in self._factories:
            known = ", ".join(sorted(self._factories)) or "none"
            raise InvalidArgument(
                f"unknown backend {name!r} (registered: {known})",
                violations=[FieldViolation("backend", f"must be one of: {known}")],
            )
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
    """A registry with the backends this build ships: ``mlx`` and ``cpu`` (numpy)."""
    from .cpu import CpuBackend
    from .mlx import MlxBackend  # MLX is imported only when the registry is built

    registry = BackendRegistry()
    registry.register_runner(
        "mlx", lambda: MlxBackend(max_batch=max_batch, prompt_cache_entries=prompt_cache_entries)
    )
    registry.register_runner(
        "cpu", lambda: CpuBackend(max_batch=max_batch, prompt_cache_entries=prompt_cache_entries)
    )
    return registry
