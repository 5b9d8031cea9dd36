"""The checkpoint layer: file order, the byte-exact writer, make-checkpoint, opening and errors."""

import dataclasses
import hashlib
import io
import mmap
import os
import pickle
import shutil
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.errors import CheckpointError, MinigrokError
from minigrok.formats import checkpoint, pickle_writer
from minigrok.formats.checkpoint import CKPT_DIR, open_checkpoint, tensor_file, tensor_specs
from minigrok.formats.make_checkpoint import make_checkpoint
from minigrok.reference.config import GROK1, load_config, preset
from minigrok.reference.quant import QuantizedWeight8bit, bf16_to_f32

from testutil import OfficialQW, run_cli


@pytest.fixture(autouse=True)
def official_class(monkeypatch):
    # What the official checkpoint.py does so that pickle can find the class.
    monkeypatch.setattr(sys.modules["__main__"], "QuantizedWeight8bit", OfficialQW, raising=False)


# ---------------------------------------------------------------- file order

LAYER_TENSORS = [  # GROK1_FACTS.md section 3, in file order within a layer
    "moe/linear/w", "moe/linear_1/w", "moe/linear_v/w", "multi_head_attention/key/w",
    "multi_head_attention/linear/w", "multi_head_attention/query/w",
    "multi_head_attention/value/w", "rms_norm/scale", "rms_norm_1/scale", "rms_norm_2/scale",
    "rms_norm_3/scale", "router/w"]


def test_grok1_has_770_files_in_sorted_layer_order():
    names = [s.name for s in tensor_specs(GROK1)]
    assert len(names) == 770
    assert names[0] == "language_model/in_out_embed/embeddings"
    assert names[1] == "language_model/rms_norm/scale"
    layer_order = [0, 1] + list(range(10, 20)) + [2] + list(range(20, 30)) + [3] + \
        list(range(30, 40)) + [4] + list(range(40, 50)) + [5] + list(range(50, 60)) + \
        [6] + list(range(60, 64)) + [7, 8, 9]
    expected = [f"transformer/decoder_layer_{i}/{t}" for i in layer_order for t in LAYER_TENSORS]
    assert names[2:] == expected
    assert names[26] == "transformer/decoder_layer_10/moe/linear/w"      # 2 + 2 * 12
    assert names[769] == "transformer/decoder_layer_9/router/w"


@given(st.integers(1, 130))
def test_file_order_is_the_sorted_order_for_any_layer_count(num_layers):
    cfg = dataclasses.replace(preset("tiny"), num_layers=num_layers)
    names = [s.name for s in tensor_specs(cfg)]
    assert len(names) == 2 + 12 * num_layers == len(set(names))
    layers = [int(n.split("/")[1].rsplit("_", 1)[1]) for n in names[2::12]]
    assert layers == sorted(range(num_layers), key=str)
    for i in range(num_layers):
        first = names.index(f"transformer/decoder_layer_{i}/moe/linear/w")
        assert names[first:first + 12] == [f"transformer/decoder_layer_{i}/{t}" for t in LAYER_TENSORS]


def test_grok1_shapes_and_active_bytes_match_the_official_sizes():
    specs = {s.name: s for s in tensor_specs(GROK1)}
    p = "transformer/decoder_layer_0/"
    assert specs[p + "multi_head_attention/query/w"][1:] == ((6144, 6144), "int8", (1, 6144))
    assert specs[p + "multi_head_attention/key/w"][1:] == ((6144, 1024), "int8", (1, 1024))
    assert specs[p + "multi_head_attention/linear/w"][1:] == ((6144, 6144), "int8", (8, 6144))
    assert specs[p + "moe/linear/w"][1:] == ((8, 6144, 32768), "int8", (8, 1, 32768))
    assert specs[p + "moe/linear_1/w"][1:] == ((8, 32768, 6144), "int8", (8, 8, 6144))
    assert specs[p + "router/w"][1:3] == ((6144, 8), "float32")
    # attention 2*6144^2 + 2*6144*1024, plus 2 experts of 3 * 6144 * 32768, times 64 layers
    assert checkpoint.active_int8_bytes(GROK1) == 64 * (88_080_384 + 1_207_959_552)
    assert sum(int(np.prod(s.shape)) for s in specs.values()) == 315_684_820_992


# ---------------------------------------------------------------- the writer, byte for byte

NUMPY_MODULE = np.zeros(1).__reduce__()[0].__module__    # what this numpy's pickle names

shapes = st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple)


def _written(value):
    buf = io.BytesIO()
    pickle_writer.dump(value, buf)
    return buf.getvalue()


@settings(max_examples=60, deadline=None)
@given(shapes, st.sampled_from(["float32", "int8", "bfloat16"]), st.integers(0, 2**32 - 1))
def test_arrays_are_written_exactly_as_pickle_writes_them(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    a = np.asarray(rng.standard_normal(shape) * 50).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    bits = a.view(np.uint16) if dtype == "bfloat16" else a
    ours = _written(pickle_writer.array_of(bits, bfloat16=dtype == "bfloat16", module=NUMPY_MODULE))
    assert ours == pickle.dumps(a, protocol=4)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 70000), st.integers(1, 40000), st.integers(0, 2**32 - 1))
def test_quantized_weights_are_written_exactly_as_pickle_writes_them(n_weight, n_scales, seed):
    # Sizes around the 64 KiB frame limit exercise where pickle starts new frames.
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, n_weight).astype(np.int8)
    s = rng.standard_normal(n_scales).astype(ml_dtypes.bfloat16)
    ours = _written(pickle_writer.quantized_value(
        pickle_writer.array_of(w, module=NUMPY_MODULE),
        pickle_writer.array_of(s.view(np.uint16), bfloat16=True, module=NUMPY_MODULE)))
    assert ours == pickle.dumps(OfficialQW(w, s), protocol=4)


# ---------------------------------------------------------------- make-checkpoint

def _files(root):
    return sorted(os.listdir(root / CKPT_DIR))


def test_written_checkpoint_has_the_official_names_dtypes_and_shapes(small_dir):
    ck = open_checkpoint(small_dir)
    cfg = ck.config
    assert _files(small_dir) == [tensor_file(i) for i in range(2 + 12 * cfg.num_layers)]
    assert load_config(small_dir) == cfg
    for i, spec in enumerate(ck.specs):
        # The official loader's route: plain pickle.load with the class in __main__.
        with open(small_dir / CKPT_DIR / tensor_file(i), "rb") as f:
            official = pickle.load(f)
        ours = ck.params[spec.name]
        if spec.scales is None:
            assert isinstance(official, np.ndarray) and official.dtype == np.float32
            np.testing.assert_array_equal(official, ours)
        else:
            assert isinstance(official, OfficialQW) and isinstance(ours, QuantizedWeight8bit)
            assert official.weight.dtype == np.int8 and official.scales.dtype == ml_dtypes.bfloat16
            assert official.weight.shape == spec.shape and official.scales.shape == spec.scales
            np.testing.assert_array_equal(official.weight, ours.weight)
            np.testing.assert_array_equal(official.scales.view(np.uint16), ours.scales)


def test_weights_are_absmax_quantised_per_column_and_row_block(small_dir):
    ck = open_checkpoint(small_dir)
    for spec in ck.specs:
        if spec.scales is None:
            continue
        qw = ck.params[spec.name]
        w = np.asarray(qw.weight, dtype=np.int16)
        blocks = spec.scales[-2]
        w = w.reshape(*w.shape[:-2], blocks, w.shape[-2] // blocks, w.shape[-1])
        # absmax maps to +-127 in every (block, column): the scale is max|w| / 127
        assert (np.abs(w).max(axis=-2) == 127).all(), spec.name
        assert (bf16_to_f32(np.asarray(qw.scales)) > 0).all()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = dataclasses.replace(preset("tiny"), vocab_size=256, num_layers=2)

    def digest(root):
        h = hashlib.sha256()
        for f in _files(root):
            h.update((root / CKPT_DIR / f).read_bytes())
        return h.hexdigest()

    a = digest(make_checkpoint(tmp_path / "a", cfg, seed=3))
    b = digest(make_checkpoint(tmp_path / "b", cfg, seed=3))
    c = digest(make_checkpoint(tmp_path / "c", cfg, seed=4))
    assert a == b != c


def test_layer_k_does_not_depend_on_the_number_of_layers(tmp_path):
    one = open_checkpoint(make_checkpoint(tmp_path / "one", dataclasses.replace(
        preset("tiny"), vocab_size=256, num_layers=1)))
    three = open_checkpoint(make_checkpoint(tmp_path / "three", dataclasses.replace(
        preset("tiny"), vocab_size=256, num_layers=3)))
    for name, value in one.params.items():
        other = three.params[name]
        for x, y in zip(value if isinstance(value, tuple) else (value,),
                        other if isinstance(other, tuple) else (other,)):
            np.testing.assert_array_equal(x, y)


def test_existing_checkpoint_is_refused_without_force_and_replaced_with_it(tmp_path):
    cfg = dataclasses.replace(preset("tiny"), vocab_size=256, num_layers=1)
    out = make_checkpoint(tmp_path / "c", cfg, seed=1)
    with pytest.raises(MinigrokError, match="already exists"):
        make_checkpoint(out, cfg, seed=2)
    make_checkpoint(out, cfg, seed=2, force=True)
    assert open_checkpoint(out).config == cfg
    assert sorted(os.listdir(tmp_path)) == ["c"]               # no temporary folders left


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    from minigrok.formats import make_checkpoint as mc

    calls = []

    def failing(path, spec, *rest):
        calls.append(spec.name)
        if len(calls) == 5:
            raise OSError("disk full")
        return original(path, spec, *rest)

    original = mc.write_tensor
    monkeypatch.setattr(mc, "write_tensor", failing)
    with pytest.raises(OSError):
        mc.make_checkpoint(tmp_path / "c", dataclasses.replace(preset("tiny"), vocab_size=256))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- opening and errors

@pytest.fixture
def broken(small_dir, tmp_path):
    """A private copy of the small checkpoint to damage."""
    return shutil.copytree(small_dir, tmp_path / "broken")


def _damage_cases():
    def missing(root):
        (root / CKPT_DIR / "tensor00007_000").unlink()

    def extra(root):
        shutil.copy(root / CKPT_DIR / "tensor00001_000", root / CKPT_DIR / "tensor00038_000")

    def truncated(root):
        path = root / CKPT_DIR / "tensor00007_000"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    def corrupted(root):
        path = root / CKPT_DIR / "tensor00007_000"
        data = bytearray(path.read_bytes())
        data[2] = 0x00                                           # FRAME opcode -> STOP-less junk
        path.write_bytes(bytes(data))

    def malicious(root):
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {root}/pwned",))
        (root / CKPT_DIR / "tensor00007_000").write_bytes(pickle.dumps(Evil(), protocol=4))

    def wrong_count(root):
        cfg = load_config(root)
        (root / "config.json").write_text(
            (root / "config.json").read_text().replace(
                f'"num_layers": {cfg.num_layers}', f'"num_layers": {cfg.num_layers + 1}'))

    def wrong_shape(root):
        (root / "config.json").write_text(
            (root / "config.json").read_text().replace('"key_size": 16', '"key_size": 8'))

    def swapped(root):
        a, b = root / CKPT_DIR / "tensor00002_000", root / CKPT_DIR / "tensor00005_000"
        a.rename(root / "tmp")
        b.rename(a)
        (root / "tmp").rename(b)

    return {
        "missing": (missing, "tensor00007_000: missing"),
        "extra": (extra, "tensor00038_000: unexpected file"),
        "truncated": (truncated, "tensor00007_000:"),
        "corrupted": (corrupted, "tensor00007_000:"),
        "malicious": (malicious, "tensor00007_000: .*system"),
        "wrong_count": (wrong_count, "tensor00038_000: missing"),
        "wrong_shape": (wrong_shape, r"tensor\d{5}_000 \(.*\): expected int8"),
        "swapped": (swapped, r"tensor00002_000 \(transformer/decoder_layer_0/moe/linear/w\): "
                             r"expected int8 \[8, 128, 688\]"),
    }


@pytest.mark.parametrize("case", list(_damage_cases()))
def test_bad_checkpoints_name_the_file(broken, case):
    damage, message = _damage_cases()[case]
    damage(broken)
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(broken)
    assert not (broken / "pwned").exists()


@pytest.mark.parametrize("case", ["truncated", "malicious", "wrong_shape"])
def test_every_command_reports_a_bad_checkpoint_in_one_line(broken, case, tmp_path):
    damage, message = _damage_cases()[case]
    damage(broken)
    for args in (["inspect"], ["logits", "--tokens", "5,6", "--out", tmp_path / "x.npy"],
                 ["generate", "--prompt-tokens", "5,6"]):
        r = run_cli(args[0], "--checkpoint", broken, *args[1:])
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("minigrok: error: tensor"), r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "x.npy").exists()
    assert not (broken / "pwned").exists()


def test_ckpt0_itself_and_its_parent_both_open(small_dir):
    assert open_checkpoint(small_dir / CKPT_DIR).root == open_checkpoint(small_dir).root


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        open_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        open_checkpoint(tmp_path / "nope")


def test_bad_config_json(broken):
    (broken / "config.json").write_text('{"emb_size": "wide"}')
    with pytest.raises(CheckpointError, match="emb_size must be a number"):
        open_checkpoint(broken)
    (broken / "config.json").write_text('{"hidden": 3}')
    with pytest.raises(CheckpointError, match="unknown field"):
        open_checkpoint(broken)


def test_opened_arrays_are_read_only_memory_maps(small_dir):
    ck = open_checkpoint(small_dir)
    for value in ck.params.values():
        for a in (value if isinstance(value, tuple) else (value,)):
            assert not a.flags.writeable
            chain = [a]
            while getattr(chain[-1], "base", None) is not None:
                chain.append(chain[-1].base)
            assert isinstance(chain[-1], mmap.mmap), [type(b) for b in chain]


def test_inspect_lists_every_tensor_and_the_totals(small_dir):
    r = run_cli("inspect", "--checkpoint", small_dir)
    assert r.returncode == 0, r.stderr
    ck = open_checkpoint(small_dir)
    rows = [line for line in r.stdout.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert len(rows) == len(ck.specs)
    for i, (row, spec) in enumerate(zip(rows, ck.specs)):
        assert f" {tensor_file(i)} " in row and f" {spec.name} " in row
    on_disk = sum((small_dir / CKPT_DIR / f).stat().st_size for f in _files(small_dir))
    assert f"bytes on disk:  {on_disk:,}" in r.stdout
    assert f"{checkpoint.active_int8_bytes(ck.config):,} int8 weight bytes" in r.stdout
