"""Training: the resumable state (state.py), fine-tuning on the generated tasks (finetune.py,
tasks.py), the offline corpus (corpus.py) and training data files (textdata.py)."""
