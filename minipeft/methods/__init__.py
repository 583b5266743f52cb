"""The methods, one file each: bitfit.py, prefix.py, prompt.py, on what they share (adapter.py);
many tasks in one batch (bank.py); peft's on-disk format (peft_format.py)."""
