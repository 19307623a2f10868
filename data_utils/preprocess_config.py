"""PreprocessConfig: the settings of one `cogview preprocess` run; its fields are the command's flags.

A light module (no numpy, PIL or torch at import) so that building the `cogview` parser stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from megatron_cogview.dataclass_flags import option

from .errors import DataError

if TYPE_CHECKING:
    from .parts import Part
    from .styles import StyleCaptions

TASKS = ("text2image", "image2text", "superres")


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of one preprocessing run (the ones that change the output are recorded in the manifest)."""

    inputs: tuple[str, ...] = option(help="JSONL/TSV files, image folders or .tar files")
    text_tokenizer: str = option(help="SentencePiece .model file")
    image_tokenizer: str = option(help="VQ-VAE folder (model.safetensors + config.json)")
    out: str = option(help="output folder for PREFIX-000000.tar ... and dataset.json")
    prefix: str = option("data", "shard name prefix")
    seq_len: int = option(1089, "stored sequence length (inputs + 1 label)")
    task: str = option("text2image", "sequence template", choices=TASKS)
    samples_per_shard: int = option(1000, "input items per shard")
    workers: int = option(0, "image-decoding processes (0: in this process)")
    batch_size: int = option(64, "images per VQ-VAE encoding batch")
    device: str = option("cpu", "device for VQ-VAE encoding (cpu, cuda, cuda:1, ...; under a launcher cuda means "
                         "cuda:LOCAL_RANK)")
    image_size: int | None = option(None, "image side (default: the VQ-VAE's size); with --crop, the side the "
                                    "images are brought to before cropping")
    crop: int | None = option(None, "superres only: train on SIZE px windows of each image at random code-aligned "
                              "corners instead of the whole image (high = that window of the whole image's codes, "
                              "low = the matching window of its 2x downsample's codes), the codes a magnify window "
                              "reads and writes; SIZE is the SR model's image size, a multiple of 2x the VQ-VAE's "
                              "downsample, at most --image-size (e.g. --image-size 512 --crop 256)")
    crop_seed: int = option(0, "seed of the crop positions (each image's crops depend only on it and the image's key)")
    crops_per_image: int = option(1, "with --crop: crops (sequences) taken from each image")
    caption_column: str | None = option(None, "caption field of JSONL/TSV inputs")
    image_column: str | None = option(None, "image path field of JSONL/TSV inputs")
    num_text_tokens: int | None = option(None, "text ids in the layout (default: tokenizer size)")
    num_image_tokens: int | None = option(None, "image ids in the layout (default: codebook size)")
    # resolved by the CLI from --num-parts/--part or the launcher's environment (data_utils/parts.py): no flags
    num_parts: int = option(1, "split the input files into this many parts (one per rank or job) ...", cli=False)
    part: int = option(0, "... and process this one", cli=False)
    wait_for_parts: bool = option(False, "when the last part to finish is not this one, wait for it (rank 0 of a "
                                  "launcher)", cli=False)
    styles: StyleCaptions | None = option(None, "caption-free style data: captions from a template "
                                          "(data_utils/styles.py)", cli=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"--task {self.task!r} is unknown; use one of {', '.join(TASKS)}")
        if self.samples_per_shard < 1 or self.batch_size < 1 or self.workers < 0:
            raise DataError("--samples-per-shard and --batch-size must be >= 1 and --workers >= 0")
        if self.crop is not None and self.task != "superres":
            raise DataError(f"--crop applies to --task superres, not {self.task}")
        if self.crops_per_image < 1 or (self.crops_per_image > 1 and self.crop is None):
            raise DataError(f"--crops-per-image {self.crops_per_image} needs --crop SIZE and must be >= 1")
        if self.crop_seed < 0:
            raise DataError(f"--crop-seed {self.crop_seed} must be >= 0")
        if not self.inputs:
            raise DataError("no inputs given; pass JSONL/TSV files, image folders or .tar shards")
        from .remote import is_url  # the validators import webdataset (torch): loaded when a config is made
        from .writer import shard_name

        shard_name(self.prefix, 0)  # validates the prefix
        if is_url(self.out):
            raise DataError(f"--out {self.out!r} is a URL; write to a local (or shared) folder and upload it "
                            "afterwards (training and `cogview data-info` read shards by URL)")
        if self.num_parts < 1 or not 0 <= self.part < self.num_parts:
            raise DataError(f"part {self.part} of {self.num_parts} is out of range; use 0 <= --part < --num-parts")

    @property
    def share(self) -> Part:
        """This run's part of the inputs."""
        from .parts import Part

        return Part(self.part, self.num_parts)
