"""Model hyper-parameters, the presets minigrok can write, and config.json.

Shape legend used in every docstring of the package:

    V  vocab_size        131072   tokens in the SentencePiece vocabulary
    T  tokens            -        positions in the current call
    S  cached positions  -        keys/values held in the KV cache
    D  emb_size          6144     model width
    d  key_size          128      width of one attention head
    H  num_q_heads       48       query heads
    K  num_kv_heads      8        key/value heads (H // K query heads share one)
    G  H // K            6        query heads per kv head
    F  ffn_size          32768    hidden width of one expert
    E  num_experts       8        experts per layer
    L  num_layers        64       decoder layers
"""

import dataclasses
import json
import math
import numbers
import os
from pathlib import Path

from ..environment import read_small
from ..errors import MinigrokError


@dataclasses.dataclass(frozen=True)
class Config:
    """The fields are named exactly as in the official run.py / config.json."""

    vocab_size: int = 128 * 1024
    sequence_len: int = 8192
    emb_size: int = 48 * 128
    key_size: int = 128
    num_q_heads: int = 48
    num_kv_heads: int = 8
    num_layers: int = 64
    widening_factor: float = 8
    num_experts: int = 8
    num_selected_experts: int = 2
    attn_output_multiplier: float = 0.08838834764831845
    embedding_multiplier_scale: float = 78.38367176906169
    output_multiplier_scale: float = 0.5773502691896257
    pad_token: int = 0
    eos_token: int = 2

    @property
    def ffn_size(self) -> int:
        """F: two thirds of widening_factor * D, rounded up to a multiple of 8 (official ffn_size)."""
        f = int(self.widening_factor * self.emb_size) * 2 // 3
        return f + (8 - f) % 8

    def validate(self, where: str = "config") -> "Config":
        """Reject configs no Grok-1 model (or the official code) could have, and any whose
        sizes or factors would make minigrok allocate without bound or compute NaN.

        Documented limits: every size at most MAX_SIZE, num_layers at most MAX_LAYERS,
        every tensor at most MAX_TENSOR_BYTES, the three multipliers and widening_factor
        finite and within MULTIPLIER_RANGE. ``where`` starts each message (the file's path).
        """
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise MinigrokError(f"{where}: {name} must be an integer, got {_show(value)}")
            if name in ("pad_token", "eos_token"):
                continue
            if value <= 0:
                raise MinigrokError(f"{where}: {name} must be positive, got {_show(value)}")
            limit = MAX_LAYERS if name == "num_layers" else MAX_SIZE
            if value > limit:
                raise MinigrokError(f"{where}: {name} {_show(value)} is above the {limit:,} "
                                    "minigrok accepts (Grok-1 has "
                                    f"{getattr(GROK1, name):,})")
        low, high = MULTIPLIER_RANGE
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            # The range test also refuses NaN and inf (and, unlike isfinite, never
            # overflows converting a huge int).
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                    not low <= value <= high:
                raise MinigrokError(f"{where}: {name} must be a finite number in [{low:g}, "
                                    f"{high:g}], got {_show(value)} (Grok-1's is "
                                    f"{getattr(GROK1, name):.6g})")
        if not 0 < self.ffn_size <= MAX_SIZE:
            raise MinigrokError(f"{where}: widening_factor {self.widening_factor:g} gives an "
                                f"expert width (ffn_size) of {self.ffn_size}, outside "
                                f"[1, {MAX_SIZE:,}]")
        if self.num_q_heads % self.num_kv_heads:
            raise MinigrokError(f"{where}: num_q_heads ({self.num_q_heads}) must be a multiple "
                                f"of num_kv_heads ({self.num_kv_heads})")
        if self.key_size % 2:
            raise MinigrokError(f"{where}: key_size ({self.key_size}) must be even for RoPE")
        if self.num_selected_experts > self.num_experts:
            raise MinigrokError(f"{where}: num_selected_experts exceeds num_experts")
        # The row-parallel weights carry one scale per block of rows, ROW_BLOCKS blocks.
        for name, width in (("emb_size", self.emb_size), ("ffn_size", self.ffn_size),
                            ("num_q_heads * key_size", self.num_q_heads * self.key_size)):
            if width % ROW_BLOCKS:
                raise MinigrokError(f"{where}: {name} ({width}) must be divisible by "
                                    f"{ROW_BLOCKS}")
        # Python ints do not overflow, but numpy's index arithmetic and the disk do: the
        # largest tensors (embeddings, one layer's experts, the attention projections) must
        # be of a size a file could hold.
        D, q = self.emb_size, self.num_q_heads * self.key_size
        for name, size in (("vocab_size * emb_size embeddings", 4 * self.vocab_size * D),
                           ("num_experts * emb_size * ffn_size experts",
                            self.num_experts * D * self.ffn_size),
                           ("emb_size * num_q_heads * key_size attention", D * q)):
            if size > MAX_TENSOR_BYTES:
                raise MinigrokError(f"{where}: {name}: {_show(size)} bytes, above the "
                                    f"{MAX_TENSOR_BYTES:,} bytes minigrok accepts for a tensor")
        if not 0 <= self.pad_token < self.vocab_size or not 0 <= self.eos_token < self.vocab_size:
            raise MinigrokError(f"{where}: pad_token and eos_token must lie in [0, vocab_size)")
        return self


def _show(value, limit: int = 40) -> str:
    """A value from a file for a message: ASCII (no newline or control character can break
    the one-line error) and at most ``limit`` characters, whatever its size."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
        digits = len(str(value)) if value.bit_length() < 14_000 else None
        if digits is None or digits > limit:
            return f"an integer of {digits or 'over 4,000'} digits"
        return str(value)
    if isinstance(value, (numbers.Real, str, type(None))):
        text = ascii(value)
    else:
        text = {list: "a JSON array", dict: "a JSON object"}.get(type(value),
                                                                 f"a {type(value).__name__}")
    return text if len(text) <= limit else text[:limit - 3] + "..."


_INT_FIELDS = ("vocab_size", "sequence_len", "emb_size", "key_size", "num_q_heads",
               "num_kv_heads", "num_layers", "num_experts", "num_selected_experts",
               "pad_token", "eos_token")
_FLOAT_FIELDS = ("widening_factor", "attn_output_multiplier", "embedding_multiplier_scale",
                 "output_multiplier_scale")

# Limits that keep a hostile or mistyped config.json from making minigrok allocate without
# bound: 16 times Grok-1's 64 layers (one spec per tensor is built before any file is read),
# int32 sizes, 1 TiB per tensor (Grok-1's largest is 3.2 GB). The factors are applied in
# float32: outside this range activations overflow to inf or vanish, and the model's logits
# turn NaN (Grok-1's lie between 0.08 and 79).
MAX_LAYERS = 1024
MAX_SIZE = 2**31 - 1
MAX_TENSOR_BYTES = 2**40
MULTIPLIER_RANGE = (1e-6, 1e6)


# The released weights were sharded 8 ways on the "model" mesh axis; the two row-parallel
# weights (attention output and expert down-projection) kept one scale row per shard.
ROW_BLOCKS = 8

GROK1 = Config()

PRESETS = {
    # Real vocabulary (so the real tokenizer works), Grok-1's structure at D=128: GQA with 2
    # query heads per kv head, 8 experts, top-2, and 12 layers so that the checkpoint's sorted
    # layer order (0, 1, 10, 11, 2, ...) differs from the numeric one. 8 kv heads because the
    # official generation loop shards the KV cache 8 ways.
    "tiny": Config(
        emb_size=128, key_size=16, num_q_heads=16, num_kv_heads=8, num_layers=12,
        attn_output_multiplier=1 / math.sqrt(16),
        embedding_multiplier_scale=math.sqrt(128),
        output_multiplier_scale=GROK1.output_multiplier_scale,
    ),
    "grok-1": GROK1,
}

CONFIG_FILE = "config.json"


def preset(name: str, num_layers: int | None = None) -> Config:
    if name not in PRESETS:
        raise MinigrokError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    if num_layers is not None:
        if num_layers < 1:
            raise MinigrokError(f"--num-layers must be at least 1, got {num_layers}")
        cfg = dataclasses.replace(cfg, num_layers=num_layers)
    return cfg


def to_json(cfg: Config) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2) + "\n"


def load_config(root: Path) -> Config:
    """``root/config.json`` when present, else the Grok-1 values of the official run.py.

    Read as a regular file only (a FIFO, a device or a directory is refused without
    blocking), of at most MAX_CONFIG_BYTES, nested at most MAX_JSON_DEPTH deep; every
    field is checked (Config.validate) before anything is sized from it.
    """
    path = Path(root) / CONFIG_FILE
    if not os.path.lexists(path):
        return GROK1
    try:
        raw = read_small(path, MAX_CONFIG_BYTES)
    except OSError as e:
        raise MinigrokError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MinigrokError(f"{path}: not valid JSON (not UTF-8: byte 0x{raw[e.start]:02x} "
                            f"at offset {e.start})") from None
    depth = _json_depth(text, MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        raise MinigrokError(f"{path}: JSON nested more than {MAX_JSON_DEPTH} deep (a config "
                            "is one flat object)")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        # json's messages give a position, never the text; a huge number's says its size.
        raise MinigrokError(f"{path}: not valid JSON ({ascii(str(e))[1:-1][:160]})") from None
    if not isinstance(data, dict):
        raise MinigrokError(f"{path}: expected a JSON object, got {_show(data)}")
    fields = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        shown = ", ".join(_show(k) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise MinigrokError(f"{path}: unknown field(s) {shown}")
    values = {}
    for name, value in data.items():
        want = float if fields[name] in (float, "float") else int
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (want is int and isinstance(value, float) and not value.is_integer()):
            raise MinigrokError(f"{path}: field {name} must be a number ({want.__name__}), "
                                f"got {_show(value)}")
        values[name] = int(value) if want is int else value
    return dataclasses.replace(GROK1, **values).validate(str(path))


MAX_CONFIG_BYTES = 64 * 1024     # Grok-1's config.json is under 1 kB
MAX_JSON_DEPTH = 16              # json.loads recurses once per level


def _json_depth(text: str, limit: int) -> int:
    """How deep ``text``'s arrays and objects nest, counting no further than ``limit + 1``
    (brackets inside strings do not count). Run before json.loads, whose recursion a
    deeply nested file would otherwise exhaust."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif ch in "]}":
            depth -= 1
    return deepest
