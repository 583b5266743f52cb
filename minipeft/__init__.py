"""minipeft: BitFit, Prefix Tuning and Prompt Tuning on from-scratch GPT-2 and T5, without Hugging Face."""

from .errors import MiniPeftError
from .gpt import GPT, GPTConfig
from .layers import KVCache
from .t5 import T5, T5Config

__all__ = ["GPT", "GPTConfig", "KVCache", "MiniPeftError", "T5", "T5Config"]
__version__ = "0.1.0"

from .bitfit import BitFit  # noqa: E402
from .prefix import PrefixTuning  # noqa: E402
from .prompt import PromptTuning  # noqa: E402

__all__ += ["BitFit", "PrefixTuning", "PromptTuning"]
