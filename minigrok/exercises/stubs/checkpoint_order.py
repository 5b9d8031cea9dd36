"""Exercise checkpoint_order: which checkpoint file holds which tensor (lesson 02).

Check your work:  python -m minigrok exercises check checkpoint_order
"""

import numpy as np  # noqa: F401  (you will want it)


def checkpoint_order(names):
    """The order of the files in ckpt-0/: tensor00000_000, tensor00001_000, ...

    names: str [N], every tensor's official name, e.g.
           'language_model/in_out_embed/embeddings', 'language_model/rms_norm/scale',
           'transformer/decoder_layer_7/multi_head_attention/query/w', ... (2 + 12 per layer),
           in no particular order
    returns int [N]: order[i] is the index in ``names`` of the tensor stored in file
           tensor{i:05d}_000, so that names[order] lists the tensors in file order

    The official checkpoint was written with one file per tensor, in the order
    jax.tree_util.tree_flatten visits the parameters: a dict's entries in sorted order of
    their keys, and the keys are these names. Work out what that order does to the layers.
    """
    raise NotImplementedError
