"""Exports: Grok-1 checkpoints written for other engines, by minigrok's own dequantisation.

``hf``: the Hugging Face layout (safetensors shards, config.json, tokenizer) that vLLM's
and, with ``sglang`` names, SGLang's Grok-1 models load; docs/export.md has the mapping.
A client of the reference and the formats, like the engine; it never imports the engine.
"""
