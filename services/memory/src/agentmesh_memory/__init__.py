"""The agentmesh memory service (`agentmesh.memory.v1.MemoryService`)."""
