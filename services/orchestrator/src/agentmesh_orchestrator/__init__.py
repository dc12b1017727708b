"""The agentmesh orchestrator (`agentmesh.orchestrator.v1.OrchestratorService`)."""
