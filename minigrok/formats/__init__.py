"""Grok-1's files: the checkpoint (read without unpickling, and written in the official format)
and the tokenizer. Uses the reference's config and QuantizedWeight8bit, never the engine."""
