"""Frozen pixel-space losses of LatentSync's second stage (LPIPS, TREPA)."""
