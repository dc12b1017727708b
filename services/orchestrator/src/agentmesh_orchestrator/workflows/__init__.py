"""Workflows (issue 14): places, transitions and tokens; this package holds the parts that do not
depend on storage: the rule language (`rules`) and the token ↔ agent mappings (`mapping`)."""
