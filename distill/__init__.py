"""Distillation of a diffusion teacher into a one-step student (DMD, DMD2)."""
