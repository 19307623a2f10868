"""Pre-train CogView: `deepspeed pretrain_gpt2.py ...`, `torchrun ... pretrain_gpt2.py ...` or `python pretrain_gpt2.py ...`.

A repo-root shim over megatron_cogview.commands.pretrain (the installed entry is `cogview train`)."""
import sys

from megatron_cogview.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
