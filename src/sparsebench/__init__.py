"""sparsebench: train sparse neural networks and find out which technique wins on your task."""

__version__ = "0.1.0"
