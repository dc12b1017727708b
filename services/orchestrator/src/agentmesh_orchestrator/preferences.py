"""What a session's user wants, read once when a run starts, and what the session may search.

`UserPreferences` is the user's settings (`users/{user}/settings`) made usable:

* the default model: agents that name no model get `default_models[<their type>]`, else
  `default_route`; built-in agents (router, planner, writer, ...) get their type's default
  model first, then the model of the session's first agent, then `default_route`;
* the local / online preference, sent with every model call (the gateway tries deployments
  of that locality first);
* the default RAG archives: the collections research agents search when the session names
  none.

`SessionScope` is what one run's turns and tools share: tenant, session, user, preferences,
and the documents the session may search (`DocumentScope`, from the session's context, else
the user's archives).

The user of a session is its metadata's `user` (Execute: also `context.user`), else
"default".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from agentmesh.common.v1 import agents_pb2, sessions_pb2, user_settings_pb2

from .agents import SessionAgent
from .domain.agent_types import AgentKind

__all__ = [
    "DEFAULT_USER",
    "DocumentScope",
    "SessionScope",
    "SettingsSource",
    "UserPreferences",
    "builtin_model",
    "session_user",
]

DEFAULT_USER = "default"
MAX_SCOPE_ITEMS = 100


class SettingsSource(Protocol):
    """Where user settings come from (the memory service)."""

    async def get_user_settings(self, tenant: str, user: str) -> user_settings_pb2.UserSettings:
        """The user's settings (the defaults when none are stored)."""
        ...


def _selection(spec: str) -> agents_pb2.ModelSelection:
    """ "provider/model" names a model directly; anything else is a route."""
    provider, slash, model = spec.partition("/")
    if slash and provider and model:
        return agents_pb2.ModelSelection(provider=provider, model=model)
    return agents_pb2.ModelSelection(route=spec)


def _names_a_model(selection: agents_pb2.ModelSelection) -> bool:
    return bool(selection.route or selection.provider or selection.model)


@dataclass(frozen=True)
class UserPreferences:
    """A user's settings as they take effect."""

    user: str = DEFAULT_USER
    default_route: str = ""
    default_models: Mapping[str, str] = field(default_factory=dict)
    model_preference: user_settings_pb2.ModelPreference.ValueType = (
        user_settings_pb2.MODEL_PREFERENCE_UNSPECIFIED
    )
    rag_archives: tuple[str, ...] = ()

    @classmethod
    def of(cls, user: str, settings: user_settings_pb2.UserSettings) -> UserPreferences:
        return cls(
            user=user,
            default_route=settings.default_route,
            default_models=dict(settings.default_models),
            model_preference=settings.model_preference,
            rag_archives=tuple(settings.rag_archives),
        )

    def model_for(self, kind: AgentKind) -> agents_pb2.ModelSelection | None:
        """The user's model for agents of `kind` that name none, if the settings say one."""
        spec = self.default_models.get(kind.value) or self.default_route
        return _selection(spec) if spec else None

    def apply(self, agent: SessionAgent) -> SessionAgent:
        """`agent`, with the user's default model when it names none."""
        if _names_a_model(agent.definition.model):
            return agent
        chosen = self.model_for(agent.kind)
        if chosen is None:
            return agent
        definition = agents_pb2.AgentDefinition()
        definition.CopyFrom(agent.definition)
        window = definition.model.context_window_tokens
        definition.model.CopyFrom(chosen)
        definition.model.context_window_tokens = window
        return replace(agent, definition=definition)


def builtin_model(
    preferences: UserPreferences | None,
    kind: AgentKind,
    agents: Sequence[SessionAgent],
    default_route: str,
) -> agents_pb2.ModelSelection:
    """The model of a built-in agent of `kind`: the user's model for its type, else the
    session's first agent's, else the user's default route, else the orchestrator's."""
    if preferences is not None and kind.value in preferences.default_models:
        return _selection(preferences.default_models[kind.value])
    chosen = agents_pb2.ModelSelection(route=default_route)
    if agents:
        chosen.CopyFrom(agents[0].definition.model)
    elif preferences is not None and preferences.default_route:
        chosen = _selection(preferences.default_route)
    return chosen


def _listed(value: object) -> list[str]:
    """A list of names from JSON (a list, or one string, possibly comma-separated)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [str(item).strip() for item in value if str(item).strip()]
    return []


def _collection_name(value: str) -> str:
    return value if value.startswith("collections/") else f"collections/{value}"


@dataclass(frozen=True)
class DocumentScope:
    """The documents a session may search: collections, documents, or both (within)."""

    collections: tuple[str, ...] = ()
    documents: tuple[str, ...] = ()
    source: str = ""  # "session" (its context names them) or "settings" (user's archives)

    @property
    def empty(self) -> bool:
        return not self.collections and not self.documents

    @classmethod
    def of(cls, metadata: Mapping[str, str], preferences: UserPreferences) -> DocumentScope:
        """From the session's context (`collection_id`, `collection_ids`, `document_ids`,
        in its metadata or in Execute's JSON `context`), else the user's RAG archives."""
        context: dict[str, object] = {}
        raw = metadata.get("context", "")
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                context = parsed
        for key in ("collection_id", "collection_ids", "document_ids"):
            if key in metadata and key not in context:
                context[key] = metadata[key]
        collections = [
            _collection_name(c)
            for key in ("collection_id", "collection_ids")
            for c in _listed(context.get(key))
        ]
        documents = _listed(context.get("document_ids"))
        if collections or documents:
            return cls(
                tuple(dict.fromkeys(collections))[:MAX_SCOPE_ITEMS],
                tuple(dict.fromkeys(documents))[:MAX_SCOPE_ITEMS],
                "session",
            )
        archives = [_collection_name(a) for a in preferences.rag_archives]
        if archives:
            return cls(tuple(dict.fromkeys(archives))[:MAX_SCOPE_ITEMS], (), "settings")
        return cls()


def session_user(session: sessions_pb2.Session) -> str:
    """The user a session works for: metadata `user`, else Execute's `context.user`."""
    user = session.metadata.get("user", "")
    if not user and session.metadata.get("context"):
        try:
            context = json.loads(session.metadata["context"])
        except ValueError:
            context = None
        if isinstance(context, dict) and isinstance(context.get("user"), str):
            user = context["user"]
    return user or DEFAULT_USER


@dataclass(frozen=True)
class SessionScope:
    """What one run's turns and tools share about the session."""

    tenant: str
    session: str
    user: str = DEFAULT_USER
    preferences: UserPreferences = field(default_factory=UserPreferences)
    documents: DocumentScope = field(default_factory=DocumentScope)
    goal: str = ""
    # Whether its agents can address messages (one has send_message): then each turn reads
    # the agent's addressed messages.
    messaging: bool = False

    @classmethod
    async def load(
        cls, settings: SettingsSource, tenant: str, session: sessions_pb2.Session
    ) -> SessionScope:
        """Read the session's user's settings and resolve what the session may search."""
        user = session_user(session)
        preferences = UserPreferences.of(user, await settings.get_user_settings(tenant, user))
        return cls(
            tenant=tenant,
            session=session.name,
            user=user,
            preferences=preferences,
            documents=DocumentScope.of(session.metadata, preferences),
            goal=session.goal,
        )
