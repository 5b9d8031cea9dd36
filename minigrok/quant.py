"""int8 weights with bfloat16 scales, as Grok-1 stores them."""

from typing import NamedTuple


class QuantizedWeight8bit(NamedTuple):
    """One quantised weight, named like the official dataclass it is read from.

    weight: int8 [in, out] or [E, in, out] (experts stacked first).
    scales: bfloat16 *bits* as uint16, [1, out] / [E, 1, out] per column, or
            [B, out] / [E, B, out] for B contiguous row blocks.
    """

    weight: object
    scales: object
