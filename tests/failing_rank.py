"""train_gpt2.py whose rank 1 fails at step 3, for test_train_gpt2.py (run under torchrun)."""

import os
import sys

from minipeft import MiniPeftError
from tests.test_train_gpt2 import train_gpt2

if os.environ.get("RANK") == "1":
    batch_at = train_gpt2.batch_at

    def failing_batch_at(train_set, step, args):
        if step == 2:
            raise MiniPeftError("rank 1 could not read its batch at step 3")
        return batch_at(train_set, step, args)

    train_gpt2.batch_at = failing_batch_at

train_gpt2.main(sys.argv[1:])
