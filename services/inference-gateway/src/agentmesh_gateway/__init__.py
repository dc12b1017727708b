"""The agentmesh inference gateway (`agentmesh.inference.v1.InferenceService`)."""
