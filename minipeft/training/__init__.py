"""Training: the one loop (loop.py) and its resumable state (state.py), what the training scripts
share around their run (cli.py), fine-tuning on the generated tasks (finetune.py, tasks.py), the
offline corpus (corpus.py) and training data files (textdata.py)."""
