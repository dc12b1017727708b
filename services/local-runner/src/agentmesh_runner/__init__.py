"""The agentmesh local runner (`agentmesh.runner.v1.LocalRunnerService`)."""
