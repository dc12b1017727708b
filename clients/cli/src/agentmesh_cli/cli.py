"""The `agentmesh` command line.

    agentmesh up                         start the services on localhost (embedded default)
    agentmesh run "goal" [--agents FILE] [--strategy round-robin] [--max-rounds 3] [--json]
    agentmesh sessions list|show|watch|cancel|approve|reject
    agentmesh agents create FILE|list|show|delete|stats
    agentmesh memory list|get|put|delete|stats, agentmesh settings show|set
    agentmesh collections create|list|show|delete, agentmesh documents upload|list|delete
    agentmesh search "QUERY"
    agentmesh workflows create FILE|list|show|tokens|add-token|fire|watch|delete
    agentmesh schedules create FILE|list|show|pause|resume|delete
    agentmesh models, agentmesh providers, agentmesh tools, agentmesh usage, agentmesh keys create

Every command finds the mesh `agentmesh up` started through its `mesh.json` (in `.data`, or
`AGENTMESH_DATA_DIR`), unless `--target`/`AGENTMESH_TARGET` and `--api-key`/`AGENTMESH_API_KEY`
say otherwise. Every list and show takes `--json`; piped, tables become tab-separated lines
with whole names. Errors print one line with the status and the field at fault, never a
traceback.

One module per command group: up.py, run.py, sessions.py, agents.py, memory.py (and settings),
catalog.py (models, providers, tools, usage, keys), knowledge.py, workflows.py (and schedules);
shared.py holds what they share.
"""

from __future__ import annotations

import typer

from . import catalog, knowledge
from .agents import agents_app
from .memory import memory_app, settings_app
from .run import run
from .sessions import sessions_app
from .up import up
from .workflows import schedules_app, workflows_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
app.command()(up)
app.command()(run)
app.add_typer(sessions_app, name="sessions")
app.add_typer(agents_app, name="agents")
app.add_typer(memory_app, name="memory")
app.add_typer(settings_app, name="settings")
app.add_typer(catalog.keys_app, name="keys")
app.add_typer(knowledge.collections_app, name="collections")
app.add_typer(knowledge.documents_app, name="documents")
app.add_typer(workflows_app, name="workflows")
app.add_typer(schedules_app, name="schedules")
app.command("search")(knowledge.search)
memory_app.command("stats")(knowledge.memory_stats)
agents_app.command("stats")(knowledge.agents_stats)
for command in (catalog.models, catalog.providers, catalog.usage, catalog.tools):
    app.command()(command)


def main() -> None:
    """Entry point of the `agentmesh` script."""
    app()


if __name__ == "__main__":
    main()
