"""agentmesh web edge: the public API over HTTP/JSON, SSE and WebSocket, and the monitoring UI."""
