"""minipeft: BitFit, Prefix Tuning and Prompt Tuning on from-scratch GPT-2 and T5, without Hugging Face.

    models/    GPT-2 and T5 with the three hooks built in (bias slots, prefix, prompt)
    methods/   BitFit, PrefixTuning, PromptTuning, many tasks in one batch, peft's format
    io/        safetensors, checkpoint folders and their key maps, tokenizers, atomic writes
    training/  the training loop and its resumable state, fine-tuning on the generated tasks, data files
"""

from .errors import MiniPeftError
from .io.tokenizer import gpt2_tokenizer
from .methods.bank import AdapterBank
from .methods.bitfit import BitFit
from .methods.peft_format import load_peft, save_peft
from .methods.prefix import PrefixTuning
from .methods.prompt import PromptTuning
from .models.gpt import GPT, GPTConfig
from .models.layers import KVCache
from .models.t5 import T5, T5Config

__all__ = ["GPT", "GPTConfig", "T5", "T5Config", "KVCache", "MiniPeftError", "BitFit", "PrefixTuning", "PromptTuning",
           "AdapterBank", "save_peft", "load_peft", "gpt2_tokenizer"]
__version__ = "0.1.0"
