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
from pathlib import Path

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

    def validate(self) -> "Config":
        """Reject configs no Grok-1 model (or the official code) could have."""
        for name in ("vocab_size", "sequence_len", "emb_size", "key_size", "num_q_heads",
                     "num_kv_heads", "num_layers", "num_experts", "num_selected_experts"):
            if getattr(self, name) <= 0:
                raise MinigrokError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.num_q_heads % self.num_kv_heads:
            raise MinigrokError(f"config: num_q_heads ({self.num_q_heads}) must be a multiple of "
                                f"num_kv_heads ({self.num_kv_heads})")
        if self.key_size % 2:
            raise MinigrokError(f"config: key_size ({self.key_size}) must be even for RoPE")
        if self.num_selected_experts > self.num_experts:
            raise MinigrokError("config: num_selected_experts exceeds num_experts")
        # The row-parallel weights carry one scale per block of rows, ROW_BLOCKS blocks.
        for name, width in (("emb_size", self.emb_size), ("ffn_size", self.ffn_size),
                            ("num_q_heads * key_size", self.num_q_heads * self.key_size)):
            if width % ROW_BLOCKS:
                raise MinigrokError(f"config: {name} ({width}) must be divisible by {ROW_BLOCKS}")
        if not 0 <= self.pad_token < self.vocab_size or not 0 <= self.eos_token < self.vocab_size:
            raise MinigrokError("config: pad_token and eos_token must lie in [0, vocab_size)")
        return self


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
    """``root/config.json`` when present, else the Grok-1 values of the official run.py."""
    path = Path(root) / CONFIG_FILE
    if not path.exists():
        return GROK1
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MinigrokError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise MinigrokError(f"{path}: expected a JSON object")
    fields = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise MinigrokError(f"{path}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        want = float if fields[name] in (float, "float") else int
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (want is int and not float(value).is_integer()):
            raise MinigrokError(f"{path}: field {name} must be a number ({want.__name__}), got {value!r}")
        values[name] = want(value)
    return dataclasses.replace(GROK1, **values).validate()
