"""Files: safetensors (own reader/writer), Hugging Face checkpoint folders (checkpoint.py) and the
two models' key maps and config.json fields (gpt2_checkpoint.py, t5_checkpoint.py), tokenizers,
atomic writes."""
