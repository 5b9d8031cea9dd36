"""Grok-1's math, the part a student reads: plain functions over NumPy (or CuPy) arrays.

In reading order: config (hyper-parameters, the shape legend), quant (int8 weights and
``linear``), rmsnorm, rope, attention, moe, layer (one decoder layer), model (the forward
pass), sampling, generate. Nothing here imports the engine; where the engine plugs in (a
weight's own ``matmul``, ``forward``'s ``layer_fn``) the reference's default is the
definition. See docs/architecture.md.
"""
