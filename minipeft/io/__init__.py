"""Files: safetensors (own reader/writer), Hugging Face checkpoint folders and their key maps
(checkpoint.py), tokenizers, atomic writes."""
