"""Data: image files (`images`), data sets in memory (`dataset`), IDX files (`idx`), decoded
caches (`cache`), WebDataset shards read (`shards`) and written (`packing`), bounded tar and
folder walks (`tarsafe`, `walk`). The Fashion-MNIST test split is embedded in this folder.

This module loads no torch: `Fit` is shared with the command line's flags.
"""

from __future__ import annotations

from typing import Literal

Fit = Literal[
    "auto", "pad", "resize"
]  # how an image is brought to the resolution (`images.fit_mode`)
FORMAT = "fdm-shards/1"  # the format of a shard folder's manifest (`packing` writes it)
MANIFEST = "manifest.json"  # a shard folder's manifest: count, resolution, each shard's SHA-256
