"""Shim: `python -m finetune.style ...` from the repository root (and scripts/*.sh) runs
megatron_cogview.finetune.style, where the code lives (the installed package runs it by that name)."""
import sys

from megatron_cogview.finetune.style import main

if __name__ == "__main__":
    sys.exit(main())
