"""Checkpoint layout, inference loading and conversion between parallel layouts (docs/ARCHITECTURE.md)."""
