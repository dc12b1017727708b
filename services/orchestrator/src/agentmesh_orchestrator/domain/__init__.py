"""Orchestration logic that needs no I/O: prompt templates, agent defaults, plans."""
