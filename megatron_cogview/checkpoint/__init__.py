"""Checkpoint layout (DESIGN.md), inference loading and conversion between parallel layouts."""
