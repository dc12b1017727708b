"""gRPC adapters implementing the orchestrator's ports."""
