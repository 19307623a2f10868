"""Shim: `python -m finetune.super_resolution ...` from the repository root (and scripts/*.sh) runs
megatron_cogview.finetune.super_resolution, where the code lives (the installed package runs it by that name)."""
import sys

from megatron_cogview.finetune.super_resolution import main

if __name__ == "__main__":
    sys.exit(main())
