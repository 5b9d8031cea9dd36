"""The one piece of CuPy's internals minigrok reaches into: see _routines_linalg."""
