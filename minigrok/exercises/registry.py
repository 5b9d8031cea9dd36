"""The exercises in teaching order: ``EXERCISES`` maps each name to its Exercise."""

from .attention import GQA, SOFTCAP_ATTENTION
from .backward import RMSNORM_BACKWARD, SOFTCAP_ATTENTION_BACKWARD
from .checkpoint_files import CHECKPOINT_ORDER
from .generation import KV_CACHE, NUCLEUS
from .grading import Exercise
from .model import DECODER_LAYER, EMBED_UNEMBED, GREEDY_GENERATE
from .moe import EXPERT_FFN, ROUTER_TOP2
from .norms_and_rope import RMSNORM, ROPE
from .tokens import DECODE, ENCODE_PROMPT
from .weights import DEQUANTIZE, INT8_MATMUL

EXERCISES: dict[str, Exercise] = {ex.name: ex for ex in [
    ENCODE_PROMPT, DECODE, CHECKPOINT_ORDER, EMBED_UNEMBED,
    RMSNORM, ROPE, SOFTCAP_ATTENTION, GQA, ROUTER_TOP2, EXPERT_FFN, DECODER_LAYER, DEQUANTIZE,
    INT8_MATMUL, NUCLEUS, KV_CACHE, GREEDY_GENERATE, RMSNORM_BACKWARD, SOFTCAP_ATTENTION_BACKWARD,
]}
