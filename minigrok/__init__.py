"""minigrok: xAI's Grok-1 in plain NumPy (CuPy on a GPU), checked against the official code."""

__version__ = "0.1.0"
