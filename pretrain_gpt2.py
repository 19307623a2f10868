"""Pre-train CogView: `deepspeed pretrain_gpt2.py ...`, `torchrun ... pretrain_gpt2.py ...` or `python pretrain_gpt2.py ...`."""
import sys

from megatron_cogview.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
