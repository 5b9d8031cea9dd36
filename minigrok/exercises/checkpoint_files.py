"""Exercise checkpoint_order: which file of ckpt-0/ holds which tensor (lesson 02).

The official checkpoint is one file per tensor, tensor00000_000, tensor00001_000, ..., in the
order JAX flattens the parameter dict: its keys (the tensors' path names) sorted as strings.
So the two language_model/ tensors come first, and the layers come as decoder_layer_0, _1,
_10, _11, ..., _19, _2, _20, ...: a loader that assumes numeric order puts layer 10's weights
where layer 2's belong, and the model still runs, on scrambled layers.

The grader may not import minigrok/formats (where tensor_specs holds the real list), so it
writes the names out again here from the same rule; tests/test_new_exercises.py checks that
the two agree for several layer counts. The student gets the names (the checker compares
arrays of numbers, not of strings) and returns the order of the files.
"""

import re

import numpy as np

from .grading import Exercise, Failed, Mistake, Property, call, fmt_array

EMBEDDINGS = "language_model/in_out_embed/embeddings"
FINAL_NORM = "language_model/rms_norm/scale"

# One decoder layer's 12 tensors, in the order the layer uses them.
LAYER_TENSORS = ("rms_norm/scale",
                 "multi_head_attention/query/w", "multi_head_attention/key/w",
                 "multi_head_attention/value/w", "multi_head_attention/linear/w",
                 "rms_norm_1/scale", "rms_norm_2/scale", "router/w",
                 "moe/linear/w", "moe/linear_v/w", "moe/linear_1/w", "rms_norm_3/scale")


def layer_prefix(layer: int) -> str:
    return f"transformer/decoder_layer_{layer}/"


def model_names(num_layers: int) -> list:
    """Every tensor's official name, in the order the model uses them: the embeddings, each
    layer's 12 (layer 0 first), the final norm."""
    return [EMBEDDINGS,
            *(layer_prefix(i) + t for i in range(num_layers) for t in LAYER_TENSORS),
            FINAL_NORM]


def file_order(names) -> np.ndarray:
    """int64 [N]: order[i] is the index in ``names`` of the tensor in file tensor{i:05d}_000.

    jax.tree_util flattens a dict in sorted key order: the files hold the names sorted as
    strings (minigrok/formats/checkpoint.py, tensor_specs).
    """
    names = [str(n) for n in np.asarray(names).reshape(-1).tolist()]
    return np.array(sorted(range(len(names)), key=lambda i: names[i]), dtype=np.int64)


def _layer_of(name: str):
    m = re.match(r"transformer/decoder_layer_(\d+)/", name)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------ checkpoint_order

def _order_cases(st, hnp):
    @st.composite
    def cases(draw):
        L = draw(st.integers(1, 14))
        names = model_names(L)
        if draw(st.booleans()):                         # in some other order
            perm = draw(st.permutations(range(len(names))))
            names = [names[i] for i in perm]
        return {"names": np.array(names), "_num_layers": L}
    return cases()


def _order_example():
    return {"names": np.array(model_names(12)), "_num_layers": 12}


def _as_names(case, order):
    names = case["names"]
    return [str(names[int(i)]) for i in order.tolist()]


def _valid(case, order) -> bool:
    n = len(case["names"])
    return order.shape == (n,) and order.dtype.kind in "iu" and \
        sorted(order.tolist()) == list(range(n))


def _order_permutation(ex, fn, case):
    order = call(ex, fn, case)[0]
    n = len(case["names"])
    if order.shape != (n,):
        return                                          # the shape check says so
    if order.dtype.kind not in "iu" or sorted(order.tolist()) != list(range(n)):
        seen = order.tolist()
        missing = [i for i in range(n) if i not in seen][:5] if order.dtype.kind in "iu" else []
        raise Failed([f"order must list every index 0..{n - 1} of names exactly once (order[i] "
                      "is the index in names of the tensor in file i); dtype int",
                      f"yours: {fmt_array(order)}"]
                     + ([f"never listed: {missing}"] if missing else []), case, [order])


def _order_language_model_first(ex, fn, case):
    order = call(ex, fn, case)[0]
    if not _valid(case, order):
        return
    first = _as_names(case, order)[:2]
    if first != [EMBEDDINGS, FINAL_NORM]:
        raise Failed(["files 0 and 1 hold the two language_model/ tensors (the embeddings, "
                      "then the final norm): 'language_model' sorts before 'transformer'",
                      f"yours: file 0 {first[0]}, file 1 {first[1]}"], case, [order])


def _layers_in_files(names) -> list:
    """The decoder layer of each file from the third on, run-length: [0, 1, 10, ...]."""
    out = []
    for n in names[2:]:
        layer = _layer_of(n)
        if not out or out[-1] != layer:
            out.append(layer)
    return out


def _order_layers_together(ex, fn, case):
    order = call(ex, fn, case)[0]
    if not _valid(case, order):
        return
    runs = _layers_in_files(_as_names(case, order))
    if len(runs) != len(set(runs)):
        raise Failed(["each decoder layer's 12 tensors sit in 12 consecutive files "
                      "(transformer/decoder_layer_N/... share their prefix)",
                      f"layers of your files 2, 3, ... (runs): {runs}"], case, [order])


def _order_compare(ex, got, want, case):
    order, right = got[0], want[0]
    if not _valid(case, order):
        raise Failed([f"order must be a permutation of 0..{len(case['names']) - 1}"], case)
    if np.array_equal(order, right):
        return
    mine, theirs = _as_names(case, order), _as_names(case, right)
    i = next(k for k in range(len(mine)) if mine[k] != theirs[k])
    raise Failed([f"file tensor{i:05d}_000 holds {theirs[i]}; your order puts "
                  f"{mine[i]} there",
                  f"layers in file order, the checkpoint's: {_layers_in_files(theirs)}",
                  f"layers in file order, yours:            {_layers_in_files(mine)}"], case)


def _numeric_order(names):
    names = [str(n) for n in names.tolist()]

    def key(i):
        n = names[i]
        layer = _layer_of(n)
        return (-1, n) if layer is None else (layer, n[len(layer_prefix(layer)):])
    return np.array(sorted(range(len(names)), key=key), dtype=np.int64)


def _creation_order(names):
    return np.arange(len(names), dtype=np.int64)


def _layer_use_order(names):
    """Layers (and the two language_model tensors) sorted as strings, but each layer's 12 in
    the order given, as a loader with a hard-coded per-layer list does."""
    names = [str(n) for n in names.tolist()]

    def key(i):
        layer = _layer_of(names[i])
        return names[i] if layer is None else layer_prefix(layer)
    return np.array(sorted(range(len(names)), key=key), dtype=np.int64)


CHECKPOINT_ORDER = Exercise(
    "checkpoint_order", "checkpoint_order", ("names",), ("order",),
    "which checkpoint file holds which tensor: JAX's sorted order",
    "02_checkpoint.py",
    "minigrok/formats/checkpoint.py: tensor_specs (sorted by name, JAX's tree-flatten order)",
    file_order,
    _order_cases, _order_example, lambda c: [(len(c["names"]),)],
    properties=(Property("order lists every tensor exactly once", _order_permutation),
                Property("files 0 and 1 hold the embeddings and the final norm",
                         _order_language_model_first),
                Property("each layer's 12 tensors are in 12 consecutive files",
                         _order_layers_together)),
    mistakes=(Mistake("the files hold the names sorted as STRINGS: decoder_layer_10 comes "
                      "before decoder_layer_2 (0, 1, 10, 11, ..., 19, 2, 20, ...); numeric "
                      "order loads layer 10's weights into layer 2", _numeric_order),
              Mistake("the files are not in the order the model uses its tensors: JAX "
                      "flattens the parameter dict in sorted order of its names",
                      _creation_order),
              Mistake("within a layer too the 12 tensors are in sorted order (moe/linear/w, "
                      "moe/linear_1/w, moe/linear_v/w, multi_head_attention/key/w, ...), not "
                      "in the order the layer uses them", _layer_use_order)),
    compare=_order_compare)
