"""The exercises in teaching order: ``EXERCISES`` maps each name to its Exercise."""

from .attention import GQA, SOFTCAP_ATTENTION
from .generation import KV_CACHE, NUCLEUS
from .grading import Exercise
from .moe import EXPERT_FFN, ROUTER_TOP2
from .norms_and_rope import RMSNORM, ROPE
from .weights import DEQUANTIZE, INT8_MATMUL

EXERCISES: dict[str, Exercise] = {ex.name: ex for ex in [
    RMSNORM, ROPE, SOFTCAP_ATTENTION, GQA, ROUTER_TOP2, EXPERT_FFN, DEQUANTIZE, INT8_MATMUL,
    NUCLEUS, KV_CACHE,
]}
