"""The tiny learnable token dataset of data_utils.tiny_dataset, under the names the training tests use."""
from __future__ import annotations

from data_utils.tiny_dataset import GRID, LAYOUT, SEQ_LEN, make_tiny_dataset, records

make_dataset = make_tiny_dataset

__all__ = ["GRID", "LAYOUT", "SEQ_LEN", "make_dataset", "records"]
