"""Diffusion: the DDIM scheduler and the jitted sampling loop."""
