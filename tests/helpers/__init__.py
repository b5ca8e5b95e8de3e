"""Shared test builders: paths to the bundled fixtures and media, tiny models and clips, the torch
``.pt`` writer, the training and live-server helpers, headless Chromium."""
