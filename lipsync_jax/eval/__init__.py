"""Evaluation metrics (sync score, ...)."""
