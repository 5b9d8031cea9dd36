"""First contact with the real download: every way the released files could spell what they
hold loads the same, a file the reader does not know says how to report it, the structure
report describes a download without reading its arrays, and a partial download is named in
one message."""

import os
import pickle
import shutil
import sys

import ml_dtypes
import numpy as np
import pytest

import minigrok
from minigrok.errors import CheckpointError
from minigrok.formats import pickle_writer, safepickle
from minigrok.formats.checkpoint import (CKPT_DIR, open_checkpoint, structure, tensor_bytes,
                                         tensor_file, tensor_specs)
from minigrok.reference.config import load_config

from testutil import OfficialQW, run_cli

TOKENS = [5, 17, 0, 300, 9, 1000, 77, 3]


@pytest.fixture(autouse=True)
def official_class(monkeypatch):
    # What the official checkpoint.py does so that pickle can find the class.
    monkeypatch.setattr(sys.modules["__main__"], "QuantizedWeight8bit", OfficialQW, raising=False)


def _swap(value, old, new):
    """A pickle_writer value with every Global ``old`` replaced by ``new``."""
    if value == old:
        return new
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, tuple) and not isinstance(value, (pickle_writer.Global,
                                                             pickle_writer.Payload)):
        items = [_swap(v, old, new) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


def _rewrite(root, writer):
    """Every tensor file of the checkpoint at ``root`` written again by ``writer(value)``
    -> bytes, where value is what the file holds (arrays copied into memory first)."""
    for name in sorted(os.listdir(root / CKPT_DIR)):
        path = root / CKPT_DIR / name
        held = safepickle.load(path)
        if isinstance(held, minigrok.reference.quant.QuantizedWeight8bit):
            held = type(held)(np.array(held.weight), np.array(held.scales).view(np.uint16))
        else:
            held = np.array(held)
        path.write_bytes(writer(held))


def _pickled(protocol):
    """The official writer: pickle.dump of numpy arrays and the dataclass (this numpy's
    names: numpy._core under numpy 2)."""
    def write(held):
        if isinstance(held, np.ndarray):
            return pickle.dumps(held, protocol=protocol)
        scales = held.scales.view(ml_dtypes.bfloat16)
        return pickle.dumps(OfficialQW(held.weight, scales), protocol=protocol)
    return write


def _spelled(module, name):
    """minigrok's writer (numpy 1.x names, protocol 4) with the scales' dtype spelled
    ``module.name``."""
    def write(held):
        if isinstance(held, np.ndarray):
            value = pickle_writer.array_of(held)
        else:
            value = pickle_writer.quantized_value(
                pickle_writer.array_of(held.weight),
                _swap(pickle_writer.array_of(held.scales, bfloat16=True),
                      pickle_writer.Global("ml_dtypes", "bfloat16"),
                      pickle_writer.Global(module, name)))
        out = __import__("io").BytesIO()
        pickle_writer.dump(value, out)
        return out.getvalue()
    return write


WRITERS = {f"pickle-protocol-{p}": _pickled(p) for p in (2, 3, 4, 5)}
WRITERS.update({f"spelled-{m}.{n}": _spelled(m, n) for m, n in safepickle.BFLOAT16_SPELLINGS})


@pytest.fixture(scope="module")
def reference_logits(small_dir):
    return minigrok.load(small_dir).logits(TOKENS)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_accepted_writing_loads_with_identical_logits(small_dir, tmp_path, writer,
                                                              reference_logits):
    copy = shutil.copytree(small_dir, tmp_path / "copy")
    _rewrite(copy, WRITERS[writer])
    if writer.startswith("spelled-") and not writer.startswith("spelled-ml_dtypes.bfloat16"):
        spelled = writer[len("spelled-"):]
        assert spelled in structure(copy)[0]["globals"]      # the new spelling is in the files
    np.testing.assert_array_equal(minigrok.load(copy).logits(TOKENS), reference_logits)


def test_an_unknown_spelling_names_the_global_the_file_and_the_report_command(small_dir,
                                                                              tmp_path):
    copy = shutil.copytree(small_dir, tmp_path / "copy")
    _rewrite(copy, _spelled("tensorflow.python.framework.dtypes", "bfloat16"))
    first = next(i for i, s in enumerate(tensor_specs(load_config(copy))) if s.scales)
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(copy)
    message = str(e.value)
    assert message.startswith(f"{tensor_file(first)}: byte ")
    assert "global 'tensorflow.python.framework.dtypes.bfloat16' is not allowed" in message
    assert f"python -m minigrok inspect --checkpoint {copy} --structure" in message
    r = run_cli("inspect", "--checkpoint", copy)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "--structure" in r.stderr
    # ... and the report it points to shows the spelling, file by file
    r = run_cli("inspect", "--checkpoint", copy, "--structure")
    assert r.returncode == 0 and "tensorflow.python.framework.dtypes.bfloat16" in r.stdout


def test_the_structure_report_of_a_minigrok_checkpoint_is_exact(small_dir):
    cfg = load_config(small_dir)
    specs = tensor_specs(cfg)
    sizes = {tensor_file(i): os.path.getsize(small_dir / CKPT_DIR / tensor_file(i))
             for i in range(len(specs))}
    layouts = structure(small_dir)
    quantised = [tensor_file(i) for i, s in enumerate(specs) if s.scales]
    floats = [tensor_file(i) for i, s in enumerate(specs) if not s.scales]
    assert len(quantised) == 7 * cfg.num_layers and len(floats) == 2 + 5 * cfg.num_layers
    want = [
        {"protocol": 4, "holds": "QuantizedWeight8bit(int8, bfloat16)", "files": quantised,
         "globals": ["__main__.QuantizedWeight8bit", "numpy.core.multiarray._reconstruct",
                     "numpy.ndarray", "numpy.dtype", "ml_dtypes.bfloat16"],
         "payload_bytes": sum(tensor_bytes(s) for s in specs if s.scales)},
        {"protocol": 4, "holds": "float32 array", "files": floats,
         "globals": ["numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"],
         "payload_bytes": sum(tensor_bytes(s) for s in specs if not s.scales)},
    ]
    for got, expected in zip(layouts, want, strict=True):
        names = expected["files"]
        assert got == dict(expected, smallest=min(sizes[n] for n in names),
                           largest=max(sizes[n] for n in names))


def test_the_structure_report_reads_no_array(small_dir, monkeypatch):
    # Surveying maps nothing and reads only the opcodes: the payload bytes are skipped.
    monkeypatch.setattr(np, "memmap", None)
    read = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def read(self, n=-1):
            data = self.f.read(n)
            read.append(len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda *a, **k: Counting(real_open(*a, **k)))
    layouts = structure(small_dir)
    assert sum(layout["payload_bytes"] for layout in layouts) > 10 * sum(read)


def test_a_partial_download_is_named_in_one_message(small_dir, tmp_path):
    copy = shutil.copytree(small_dir, tmp_path / "copy")
    specs = tensor_specs(load_config(copy))
    big = max(range(len(specs)), key=lambda i: tensor_bytes(specs[i]))
    other = next(i for i in range(len(specs)) if i != big and specs[i].scales)
    (copy / CKPT_DIR / tensor_file(other)).unlink()                        # missing
    data = (copy / CKPT_DIR / tensor_file(big)).read_bytes()
    (copy / CKPT_DIR / tensor_file(big)).write_bytes(data[:len(data) // 3])   # short
    shutil.copy(copy / CKPT_DIR / tensor_file(0), copy / CKPT_DIR / "tensor00999_000")  # extra
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(copy)
    message = str(e.value)
    need = tensor_bytes(specs[big])
    for part in (f"{tensor_file(other)}: missing", f"{tensor_file(big)}: short: "
                 f"{len(data) // 3:,} bytes, its arrays alone take {need:,}",
                 "tensor00999_000: unexpected file", "re-fetch just the missing and short files"):
        assert part in message
    r = run_cli("inspect", "--checkpoint", copy)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.strip().endswith(
        message)
