"""The real-time preview server: `python -m distill.serve STUDENT` (app, batcher, model, limits, source, bench)."""
