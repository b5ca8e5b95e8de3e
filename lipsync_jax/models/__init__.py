"""Flax (linen) models: pure modules, channels-last, explicit ``dtype``/``param_dtype``."""
