"""Marker for the fake hydra: the hydra-colorlog plugin is installed."""
