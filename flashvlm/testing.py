"""Tiny, randomly initialised VLMs built offline, for tests, benchmarks and the demo.

Each builder writes a real checkpoint (config, weights, tokenizer, processor) with `save_pretrained`, so
that callers load it through the same `flashvlm.load` / `from_pretrained` path as a hub checkpoint.
"""

# ==== LLaVA section (owned by the LLaVA adapter) ====

# ==== Qwen2.5-VL section (owned by the Qwen2.5-VL adapter) ====
