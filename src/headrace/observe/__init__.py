"""Seeing what a pipeline does: counters, metrics, the HTTP endpoint."""
