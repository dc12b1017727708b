"""Backends behind the runner registry: ``register_runner``/``get_runner`` and the ``mlx`` one."""

from .base import Backend, Inbox, Job, LoadedModel
from .registry import BackendRegistry, default_registry

__all__ = ["Backend", "BackendRegistry", "Inbox", "Job", "LoadedModel", "default_registry"]
