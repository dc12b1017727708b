"""The example routes file the README points users to loads with the gateway's own loader."""

from __future__ import annotations

from pathlib import Path

from agentmesh_gateway.routes import load_routes

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "routes.example.yaml"


def test_the_example_routes_file_loads_with_fallbacks_for_every_provider() -> None:
    table = load_routes(EXAMPLE, environ={})
    providers = {d.provider for route in table.routes.values() for d in route}
    assert providers == {"openai", "anthropic", "gemini", "groq", "xai", "ollama", "local"}
    assert [d.provider for d in table.routes["default"]] == ["openai", "anthropic", "gemini"]
