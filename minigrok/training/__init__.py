"""Training a small Grok-1 in NumPy: a client of the reference model."""
