"""Subcommands of the `cogview` CLI (entry layer)."""
