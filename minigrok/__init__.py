"""minigrok: xAI's Grok-1 in plain NumPy (CuPy on a GPU), checked against the official code.

    import minigrok
    m = minigrok.load("/path/to/checkpoints")     # or None: the built-in trained model
    m.logits([5, 17, 300])                         # float32 [3, 131072]
    for piece in m.generate("Once upon a time", max_new_tokens=20):
        print(piece, end="")

The package is three layers and the application (docs/architecture.md): ``reference`` (the
model's math), ``formats`` (checkpoints and the tokenizer), ``engine`` (the fast paths), and
``api``, ``cli``, ``bench``, ``golden`` on top. ``load`` and ``Model`` are imported on first
use, so that ``import minigrok.reference.rope`` loads the reference alone.
"""

__version__ = "0.1.0"

__all__ = ["Model", "load", "__version__"]


def __getattr__(name):
    if name in ("Model", "load"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'minigrok' has no attribute {name!r}")
