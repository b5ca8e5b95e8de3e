"""Offline preparation of lipsync-jax training data (``python -m data_prep --help``)."""
