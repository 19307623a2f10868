"""Shim: `python -m finetune.caption_model ...` from the repository root (and scripts/*.sh) runs
megatron_cogview.finetune.caption_model, where the code lives (the installed package runs it by that name)."""
import sys

from megatron_cogview.finetune.caption_model import main

if __name__ == "__main__":
    sys.exit(main())
