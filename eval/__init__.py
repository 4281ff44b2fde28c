"""Evaluation: samplers, metrics and the harness that writes metrics.json."""
