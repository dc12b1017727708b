"""Fake provider servers speaking each provider's exact wire format, with injected faults."""
