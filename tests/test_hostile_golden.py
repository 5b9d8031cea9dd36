"""Nothing hangs: hostile golden files (issue 23) are one line on stderr and exit code 2, in
bounded time and memory; NaN compares as a failure.

``golden verify`` and ``golden compare`` read files that anyone may have made. The reader
(minigrok/golden.py ``read``) checks every size against the limits of docs/golden-format.md
before it decompresses or allocates: the zip's directory, each entry's declared size, each
.npy header's shape * itemsize; then dtypes per name, shapes against each other and id ranges.

The zips here are built byte by byte (``build_zip``), so a declared size, a compression
method or a flag can say anything. The command-line cases run in a child under a memory limit
and a timeout and check that no file that was there changed; the hypothesis cases call
``golden.read`` in this process, where an exception other than MinigrokError is a failure.
"""

import hashlib
import io
import json
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigrok import golden
from minigrok.errors import MinigrokError

from testutil import REPO

MEMORY = 2 << 30
GIB2 = 2 << 30


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run_limited(*args, timeout=60):
    """``python -m minigrok ARGS`` under MEMORY and ``timeout``: (exit code, stdout, stderr,
    seconds)."""
    env = dict(os.environ, MINIGROK_NO_DOWNLOAD="1", OPENBLAS_NUM_THREADS="1")
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "minigrok", *map(str, args)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout,
                       preexec_fn=_limit_memory)
    return r.returncode, r.stdout, r.stderr, time.monotonic() - start


def snapshot(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "other"
            for p in root.iterdir()}


# -- building zips that say anything -----------------------------------------------------

def npy(a, **header) -> bytes:
    """A .npy file of ``a``; ``header`` replaces fields of its header dict (descr, shape,
    fortran_order) without changing the data."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(a), allow_pickle=True)
    if not header:
        return buf.getvalue()
    data = buf.getvalue()[128:] if len(buf.getvalue()) >= 128 else b""
    fields = {"descr": np.lib.format.dtype_to_descr(np.asarray(a).dtype),
              "fortran_order": False, "shape": np.asarray(a).shape, **header}
    return raw_npy(repr(fields).encode(), data)


def raw_npy(text: bytes, data: bytes, version=(1, 0)) -> bytes:
    pad = b" " * (-(10 + len(text) + 1) % 64)
    size = struct.pack("<H" if version[0] == 1 else "<I", len(text + pad) + 1)
    return b"\x93NUMPY" + bytes(version) + size + text + pad + b"\n" + data


def entry(name, payload: bytes, deflate=False, **fields) -> dict:
    """One zip entry; ``fields`` override what the zip declares: method, flags, crc, csize,
    usize (both headers), or data (the stored bytes themselves)."""
    data = zlib.compress(payload, 9)[2:-4] if deflate else payload
    e = {"name": name.encode() if isinstance(name, str) else name, "data": data,
         "method": 8 if deflate else 0, "flags": 0x800 if isinstance(name, str) else 0,
         "crc": zlib.crc32(payload), "csize": len(data), "usize": len(payload)}
    e.update(fields)
    return e


def build_zip(entries, eocd_entries=None, eocd_cd_size=None, zip64=False) -> bytes:
    """A zip of ``entries`` (see ``entry``), written field by field; the end record's counts
    may lie, and with ``zip64`` a ZIP64 end record (with the same counts) comes first."""
    out, central = bytearray(), bytearray()
    for e in entries:
        offset = len(out)
        head = (e["flags"], e["method"], 0, 33, e["crc"], e["csize"], e["usize"])
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, *head, len(e["name"]), 0)
        out += e["name"] + e["data"]
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x314, 20, *head,
                               len(e["name"]), 0, 0, 0, 0, 0o644 << 16, offset)
        central += e["name"]
    n = len(entries) if eocd_entries is None else eocd_entries
    size = len(central) if eocd_cd_size is None else eocd_cd_size
    tail = b""
    if zip64:
        at = len(out) + len(central)
        tail = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, size, len(out))
        tail += struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    return bytes(out + central + tail + struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), min(size, 2 ** 32 - 1),
        len(out), 0))


T, D, E, V = 4, 8, 4, 16
META = {"format": golden.FORMAT, "format_version": 1, "num_tokens": T,
        "config": {"emb_size": D, "num_experts": E, "num_selected_experts": 2,
                   "vocab_size": V},
        "tolerances": {"float32": {"default": 1e-4, "tie": 1e-4}}}


def good_arrays():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(E), T).astype(np.float32)
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :2].astype(np.int32)
    return {"tokens": np.array([1, 5, 0, 15], np.int32),
            "embeddings": rng.standard_normal((T, D)).astype(np.float32),
            "layer_00/router_probs": probs, "layer_00/expert_ids": ids,
            "layer_00/expert_gates": np.take_along_axis(probs, ids, -1),
            "logits": rng.standard_normal((T, V)).astype(np.float32),
            "meta": np.frombuffer(json.dumps(META).encode(), np.uint8)}


def good_entries(**replace):
    """Entries of a valid small golden file; ``replace``: name -> payload bytes (None drops)."""
    payloads = {n: npy(a) for n, a in good_arrays().items()} | replace
    return [entry(n + ".npy", p) for n, p in payloads.items() if p is not None]


def meta_npy(text: bytes) -> bytes:
    return npy(np.frombuffer(text, np.uint8))


def deflate_zeros(prefix: bytes, total: int) -> bytes:
    """A raw deflate stream of ``prefix`` and zeros up to ``total`` bytes, in 1/1000 of that:
    after a full flush the compressor starts afresh, so each 16 MiB block compresses to the
    same bytes and is computed once."""
    block = 1 << 24
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(prefix + bytes(block - len(prefix))) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    return first + again * (total // block - 1) + c.flush()


# -- the command line: each hostile case, one line and exit code 2 ---------------------------

@pytest.fixture(scope="module")
def bomb_stream():
    """A deflate stream of 2 GiB: a .npy header claiming [2^29] float32 (2 GiB), then zeros;
    2 MB compressed."""
    header = npy(np.zeros(0, np.float32), shape=(GIB2 // 4,))
    return header, deflate_zeros(header, GIB2 + (1 << 24))


def hostile_cases(tmp, bomb):
    """{case: (file bytes or a maker, words the one-line error must hold)}."""
    header, stream = bomb
    ok = good_entries()
    bomb_name = b"logits.npy"
    fifo = tmp / "fifo.npz"
    os.mkfifo(fifo)
    (tmp / "folder.npz").mkdir()
    overlapping = build_zip(ok[:1])
    first = ok[0]
    # A second entry whose data is the first one's: the non-recursive zip bomb's trick.
    again = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x314, 20, 0, 0, 0, 33, first["crc"],
                        first["csize"], first["usize"], 10, 0, 0, 0, 0, 0, 0) + b"tokens.npy"
    cd_start = overlapping.index(b"PK\x01\x02")
    cd = overlapping[cd_start:-22].replace(b"tokens.npy", b"tokenz.npy") + again
    overlapping = overlapping[:cd_start] + cd + struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, 2, 2, len(cd), cd_start, 0)
    nested = b"[" * 100000 + b"]" * 100000
    small = npy(np.zeros(16, np.float32))
    small_bomb = deflate_zeros(small, 1 << 30)
    return {
        "zip bomb, honest sizes": (build_zip([entry(bomb_name, b"", data=stream, method=8,
                                                    crc=0, csize=len(stream),
                                                    usize=GIB2 + (1 << 24))]),
                                   ["logits.npy", "declares", "more than the limit of 1 GiB"]),
        # The zip says 192 bytes (and their CRC-32); the .npy header inside says 2 GiB.
        "zip bomb, declared sizes lie": (build_zip([entry(bomb_name, b"", data=stream, method=8,
                                                          crc=zlib.crc32(header + bytes(64)),
                                                          csize=len(stream),
                                                          usize=len(header) + 64)]),
                                         ["entry logits", "header claims", "2 GiB"]),
        # Both say 64 bytes of [16] float32: reading stops there, 2 GiB of stream unread.
        "zip bomb behind a small entry": (build_zip([entry(bomb_name, b"", data=small_bomb,
                                                           method=8, crc=zlib.crc32(small),
                                                           csize=len(small_bomb),
                                                           usize=len(small))]),
                                          ["logits has shape [16]"]),
        "zip bomb, wrong CRC": (build_zip([entry(bomb_name, b"", data=stream, method=8, crc=0,
                                                csize=len(stream), usize=len(header) + 64)]),
                                ["entry logits", "CRC-32"]),
        "header claims terabytes": (build_zip([entry("logits.npy", npy(
            np.zeros(4, np.float32), shape=(1 << 40, 1 << 20)))]),
                                    ["entry logits", "header claims", "more than the limit"]),
        "truncated deflate": (build_zip([entry("logits.npy", b"", data=stream[:50000], method=8,
                                               crc=0, csize=50000, usize=1 << 20)]),
                              ["entry logits"]),
        "string array": (build_zip(good_entries(embeddings=npy(np.array(["a", "bc"])))),
                         ["entry embeddings", "not strings"]),
        "object array": (build_zip(good_entries(embeddings=npy(np.array([{}, None])))),
                         ["entry embeddings", "'|O'"]),
        "record array": (build_zip(good_entries(logits=npy(np.zeros(3, "f4,i4")))),
                         ["entry logits", "records"]),
        "float ids": (build_zip(good_entries(tokens=npy(np.arange(4.0)))),
                      ["entry tokens", "ids are integers"]),
        "integer values": (build_zip(good_entries(logits=npy(np.zeros((T, V), np.int32)))),
                           ["entry logits", "values are floats"]),
        "expert id out of range": (build_zip(good_entries(**{
            "layer_00/expert_ids": npy(np.full((T, 2), E, np.int32))})),
                                   ["layer_00/expert_ids holds 4, outside [0, 4)"]),
        "negative expert id": (build_zip(good_entries(**{
            "layer_00/expert_ids": npy(np.full((T, 2), -1, np.int32))})),
                               ["layer_00/expert_ids holds -1"]),
        "too few router rows": (build_zip(good_entries(**{
            "layer_00/router_probs": npy(np.full((T - 1, E), 0.25, np.float32))})),
                                ["layer_00/router_probs has shape [3, 4]", "T is 4"]),
        "wrong rank": (build_zip(good_entries(embeddings=npy(np.zeros(T * D, np.float32)))),
                       ["embeddings has shape [32]", "[T, D]"]),
        "encrypted entry": (build_zip([dict(e, flags=1) if e["name"] == b"logits.npy" else e
                                       for e in ok]), ["entry 'logits.npy' is encrypted"]),
        "bzip2 entry": (build_zip([dict(e, method=12) if e["name"] == b"logits.npy" else e
                                   for e in ok]), ["compression method 12 is not supported"]),
        "AES entry": (build_zip([dict(e, method=99) for e in ok]),
                      ["compression method 99 is not supported"]),
        "nested meta": (build_zip(good_entries(meta=meta_npy(nested))),
                        ["'meta'", "nested too deeply"]),
        "meta not UTF-8": (build_zip(good_entries(meta=meta_npy(b'{"a": "\xff"}'))),
                           ["'meta' is not UTF-8 JSON (byte 7"]),
        "meta not JSON": (build_zip(good_entries(meta=meta_npy(b"{'a': 1}"))),
                          ["'meta' is not UTF-8 JSON"]),
        "NaN tolerance": (build_zip(good_entries(meta=meta_npy(json.dumps(dict(
            META, tolerances={"float32": {"default": float("nan")}})).encode()))),
                          ["meta tolerance 'default' is nan"]),
        "truncated file": (build_zip(ok)[:-30], ["not an .npz file"]),
        "cut in an entry": (build_zip(ok[:3])[:300] + build_zip(ok[:3])[-200:],
                            ["not a readable .npz file"]),
        "not a zip": (b"\x93NUMPY" + bytes(200), ["not an .npz file (not a zip archive)"]),
        "empty": (b"", ["not an .npz file"]),
        "directory": ("folder.npz", ["a directory"]),
        "FIFO": (fifo.name, ["not a regular file"]),
        "overlapping entries": (overlapping, ["overlaps"]),
        "a million entries claimed": (build_zip(ok, eocd_entries=10 ** 6, zip64=True),
                                      ["1000000 entries"]),
        "huge directory claimed": (build_zip(ok, eocd_cd_size=1 << 31), ["zip directory"]),
        "ZIP64 directory of 2^40": (build_zip(ok, eocd_cd_size=1 << 40, zip64=True),
                                    ["zip directory"]),
        "long name": (build_zip([entry("x" * 5000 + "\n.npy", npy(np.zeros(2)))]),
                      ["is not an array", "..."]),
        "duplicate name": (build_zip(ok + ok[-1:]), ["appears twice"]),
        "not .npy": (build_zip(ok + [entry("readme.txt", b"hello")]), ["'readme.txt'"]),
    }


def test_hostile_files_are_one_line_and_exit_2(tmp_path, bomb_stream):
    cases = hostile_cases(tmp_path, bomb_stream)
    for case, (content, _) in cases.items():
        if isinstance(content, bytes):
            (tmp_path / f"{case}.npz").write_bytes(content)
    assert os.path.getsize(tmp_path / "zip bomb, honest sizes.npz") < 3 << 20
    before = snapshot(tmp_path)
    paths = [tmp_path / (c if isinstance(c, str) else f"{case}.npz")
             for case, (c, _) in cases.items()]
    with ThreadPoolExecutor(4) as pool:                  # each waits on its own child
        results = list(pool.map(lambda p: run_limited("golden", "compare", p, p), paths))
    for (case, (_, words)), (rc, out, err, seconds) in zip(cases.items(), results):
        assert rc == 2 and not out, (case, rc, out, err)
        assert err.startswith("minigrok: error: ") and err.count("\n") == 1, (case, err)
        assert "Traceback" not in err and len(err) < 700, (case, err)
        for word in words:
            assert word in err, (case, word, err)
        assert seconds < 30, (case, seconds)
    assert snapshot(tmp_path) == before


def test_verify_refuses_files_it_cannot_recompute_in_bounds(small_dir, tmp_path):
    # verify recomputes every token of the file: a million tokens (over sequence_len) or
    # 8000 with a layer (under it, but that layer's [H, T, T] attention weights alone are
    # 4 GB) is refused before computing.
    for name, n in (("million", 1_000_000), ("eight-thousand", 8000)):
        meta = dict(META, num_tokens=n, config={})
        path = tmp_path / f"{name}.npz"
        path.write_bytes(build_zip(good_entries(tokens=npy(np.zeros(n, np.int32)),
                                                meta=meta_npy(json.dumps(meta).encode()),
                                                embeddings=None, logits=None, **{
                                                    "layer_00/router_probs": None,
                                                    "layer_00/expert_ids": npy(np.zeros(
                                                        (n, 2), np.int32)),
                                                    "layer_00/expert_gates": None})))
        rc, out, err, seconds = run_limited("golden", "verify", path, "--checkpoint", small_dir)
        assert rc == 2 and not out and err.count("\n") == 1, (rc, out, err)
        assert f"{n} tokens; recomputing them would hold" in err and seconds < 20, err
    rc, _, err, _ = run_limited("golden", "verify", tmp_path, "--checkpoint", small_dir)
    assert rc == 2 and "a directory" in err and err.count("\n") == 1, err


def test_nan_compares_as_a_failure(tmp_path):
    arrays = good_arrays()
    expected = tmp_path / "expected.npz"
    expected.write_bytes(build_zip(good_entries()))
    for side in ("actual", "expected"):
        bad = dict(arrays)
        bad["embeddings"] = arrays["embeddings"].copy()
        bad["embeddings"][2, 3] = np.nan
        nan_file = tmp_path / f"nan-{side}.npz"
        golden.write(nan_file, bad)
        files = (expected, nan_file) if side == "actual" else (nan_file, expected)
        rc, out, err, _ = run_limited("golden", "compare", *files)
        assert rc == 1 and not err, (rc, err)
        assert out.splitlines()[-1].startswith("first failing stage: embeddings: ") and \
            f"NaN in {side} at [2, 3]" in out, out
    # NaN on both sides at the same place is no match either; equal infinities are.
    e = {"x": np.array([1.0, np.inf, 3.0])}
    assert golden.compare(e, {"x": np.array([1.0, np.inf, 3.0])})[0]["status"] == "ok"
    row = golden.compare({"x": np.array([np.nan, 1.0])}, {"x": np.array([np.nan, 1.0])})[0]
    assert row["status"] == "FAIL" and row["note"] == "NaN in expected at [0]"
    # An infinity in expected does not make the scale infinite (which would pass anything).
    row = golden.compare({"x": np.array([np.inf, 1.0])}, {"x": np.array([np.inf, 5.0])})[0]
    assert row["status"] == "FAIL" and row["scale"] == 1.0


def test_a_valid_file_from_the_builder_reads(tmp_path):
    # The builder writes real zips: without a hostile change, the file reads and matches.
    path = tmp_path / "good.npz"
    for zip64 in (False, True):
        path.write_bytes(build_zip(good_entries(), zip64=zip64))
        got = golden.read(path)
        for name, a in good_arrays().items():
            if name != "meta":
                assert np.array_equal(got[name], a), name
        assert got["meta"] == META
        assert golden.first_failure(golden.compare(got, got)) is None
    # Compressed (np.savez_compressed, as a port may write), Fortran order, big-endian, int64
    # ids and float64 values read too.
    arrays = {n: a for n, a in good_arrays().items() if n != "meta"}
    arrays["embeddings"] = np.asfortranarray(arrays["embeddings"].astype(">f8"))
    arrays["tokens"] = arrays["tokens"].astype(np.int64)
    for save in (np.savez, np.savez_compressed):
        save(path, **arrays)
        got = golden.read(path)
        assert all(np.array_equal(got[n], a) for n, a in arrays.items())


# -- hypothesis: the input spaces are large -----------------------------------------------

def read_or_error(path):
    """golden.read's answer: the arrays, or the message of its MinigrokError, which must be
    one short line (the command line prints it after 'minigrok: error: ')."""
    try:
        return golden.read(path)
    except MinigrokError as e:
        message = str(e)
        assert "\n" not in message and "\r" not in message and len(message) < 700, message
        return message


HYP = settings(max_examples=60, deadline=2000,
               suppress_health_check=[HealthCheck.function_scoped_fixture])
SIZES = st.one_of(st.none(), st.integers(0, 2 ** 32 - 1), st.integers(0, 400))


@HYP
@given(index=st.integers(0, 6), method=st.sampled_from([None, 0, 1, 6, 8, 9, 12, 14, 93, 98, 99]),
       flags=st.sampled_from([None, 0, 1, 8, 0x41, 0x800]), csize=SIZES, usize=SIZES,
       crc=st.one_of(st.none(), st.integers(0, 2 ** 32 - 1)), deflate=st.booleans(),
       cut=st.one_of(st.none(), st.integers(0, 3000)))
def test_zip_headers_declared_against_real(tmp_path, index, method, flags, csize, usize, crc,
                                           deflate, cut):
    entries = [entry(e["name"].decode(), e["data"], deflate=deflate) for e in good_entries()]
    changes = {k: v for k, v in (("method", method), ("flags", flags), ("csize", csize),
                                 ("usize", usize), ("crc", crc)) if v is not None}
    entries[index] = dict(entries[index], **changes)
    data = build_zip(entries)
    path = tmp_path / "h.npz"
    path.write_bytes(data[:cut] if cut is not None else data)
    got = read_or_error(path)
    if not isinstance(got, str):              # then whatever changed changed nothing real
        e = entries[index]
        assert e["method"] == (8 if deflate else 0) and not e["flags"] & 1
        assert e["usize"] == len(npy(good_arrays()[e["name"][:-4].decode()]))
        for name, a in good_arrays().items():
            if name != "meta":
                assert np.array_equal(got[name], a)


@HYP
@given(name=st.one_of(st.text(max_size=260), st.binary(max_size=260)), suffix=st.booleans())
def test_entry_names(tmp_path, name, suffix):
    if suffix:
        name = name + (".npy" if isinstance(name, str) else b".npy")
    path = tmp_path / "n.npz"
    path.write_bytes(build_zip(good_entries() + [entry(name, npy(np.zeros(3, np.float32)))]))
    got = read_or_error(path)
    if not isinstance(got, str):
        assert all(len(n) <= 200 and n.isascii() and n.isprintable() for n in got)


@HYP
@given(depth=st.integers(1, 200_000), opener=st.sampled_from(['[', '{"a":', '[1,']),
       junk=st.binary(max_size=40))
def test_meta_nesting_and_bytes(tmp_path, depth, opener, junk):
    closer = {"[": "]", '{"a":': "}", "[1,": "]"}[opener]
    path = tmp_path / "m.npz"
    for text in ((opener * depth + "0" + closer * depth).encode(), junk):
        path.write_bytes(build_zip(good_entries(meta=meta_npy(text))))
        got = read_or_error(path)
        assert isinstance(got, str) or got["meta"] == json.loads(text)
        if isinstance(got, str) and text is not junk:
            assert "nested too deeply" in got or "more than the limit of 1 MiB" in got, got


DESCRS = ["<f4", ">f8", "<f2", "<i4", "|u1", "<i8", "|b1", "|O", "<U3", "|S2", "|V8", "<M8[ns]",
          "<c8", "<f16", "a", "(3,)<f4", [("a", "<f4")], 7, "<f4 ", ""]


@HYP
@given(descr=st.sampled_from(DESCRS), fortran=st.sampled_from([False, True, 1, "no"]),
       shape=st.one_of(st.lists(st.integers(-2, 2 ** 40), max_size=4).map(tuple),
                       st.lists(st.integers(0, 3), max_size=40).map(tuple),
                       st.just("(1,"), st.just([2, 2])),
       name=st.sampled_from(["logits", "tokens", "layer_00/q", "extra", "meta"]),
       data=st.binary(max_size=64), version=st.sampled_from([(1, 0), (2, 0), (3, 0), (9, 9)]),
       text=st.one_of(st.none(), st.binary(max_size=300)))
def test_npy_headers(tmp_path, descr, fortran, shape, name, data, version, text):
    header = text if text is not None else \
        repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode()
    path = tmp_path / "a.npz"
    path.write_bytes(build_zip([entry(name + ".npy", raw_npy(header, data, version))]))
    got = read_or_error(path)
    if not isinstance(got, str):
        assert name != "meta" or isinstance(got["meta"], (dict, list, str, int, float))
        a = got.get(name)
        assert a is None or (a.nbytes == len(data) and a.dtype.kind in "iuf")


@HYP
@given(deflate=st.booleans(), zip64=st.booleans(),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=8))
def test_any_bytes_changed(tmp_path, deflate, zip64, flips):
    # Whatever bytes of a valid file change (zipfile's own structures included), the answer
    # is the arrays or one line.
    data = bytearray(build_zip([entry(e["name"].decode(), e["data"], deflate=deflate)
                                for e in good_entries()], zip64=zip64))
    for where, value in flips:
        data[int(where * len(data))] = value
    path = tmp_path / "b.npz"
    path.write_bytes(data)
    read_or_error(path)
