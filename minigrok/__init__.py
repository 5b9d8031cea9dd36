"""minigrok: xAI's Grok-1 in plain NumPy (CuPy on a GPU), checked against the official code.

    import minigrok
    m = minigrok.load("/path/to/checkpoints")     # or None: the built-in tiny checkpoint
    m.logits([5, 17, 300])                         # float32 [3, 131072]
    for piece in m.generate("The answer is", max_new_tokens=20):
        print(piece, end="")
"""

__version__ = "0.1.0"

from .api import Model, load  # noqa: E402

__all__ = ["Model", "load", "__version__"]
