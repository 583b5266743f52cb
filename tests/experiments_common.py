"""What the tests of the reproductions share: tiny backbones in train_char.py's folder names."""

import os

from minipeft import GPT, GPTConfig
from minipeft import experiments as ex
from minipeft.io.tokenizer import CharTokenizer

CHARS = CharTokenizer.from_text("".join(chr(c) for c in range(32, 127)) + "\n")


def make_backbones(root):
    """Tiny random GPTs in train_char.py's folder names, growing with the size as the real ones do."""
    for i, folder in enumerate(ex.backbone_folders(str(root)).values()):
        GPT(GPTConfig(vocab_size=CHARS.vocab_size, n_positions=256, n_embd=16 * (i + 1), n_layer=1, n_head=2)
            ).save_pretrained(os.path.join(folder, "model"))
        with open(os.path.join(folder, "tokenizer.json"), "w") as f:
            f.write(CHARS.to_json())
    return ex.backbone_folders(str(root))
