"""The models: GPT-2 (gpt.py) and T5 (t5.py), with the three PEFT hooks built in; the layers they
share (layers.py: bias slots, attention with a prefix, the KV cache) and decoding (generation.py)."""
