"""`ttl`: the Tencent TTL stream (the paper's main dataset, docs/protocol.md §1.5, docs/datasets.md), 6 tasks.

The six CSV files of the CONURE/PeterRec "ColdRec" bundle, in the reference format that
`custom` reads (T1: left-padded comma-separated item ids; later tasks: `sequence,,targets`):
  T1 original_desen_pretrain.csv                  watching, next item (100 items per line)
  T2 original_desen_finetune_click_nouserID.csv   clicking, recommendation
  T3 original_desen_finetune_like_nouserID.csv    thumb-up, recommendation
  T4 original_desen_age.csv    T5 original_desen_gender.csv    T6 original_desen_lifestatus.csv
Indexing is the reference [R]'s (no UNK slot). The files are fixed-length (`padded`); an
optional `stream.json` in the folder may set the options `unseen` ("error", the default, or
"pad") and `max_len`, e.g. `{"unseen": "pad"}`.
"""

from __future__ import annotations

from pathlib import Path

from curb.data import (DataFormatError, DataNotFoundError, Release, candidate_dirs, not_found_message,
                       register_dataset, register_release)
from curb.datasets.custom import MANIFEST, Manifest, TaskSpec, load, parse_options, read_json
from curb.streams import TaskStream

VERSION = "1"
FILES = (
    ("T1", "next_item", "original_desen_pretrain.csv", "watching (QQ Browser), next item"),
    ("T2", "recommend", "original_desen_finetune_click_nouserID.csv", "clicking (Kandian)"),
    ("T3", "recommend", "original_desen_finetune_like_nouserID.csv", "thumb-up (Kandian)"),
    ("T4", "classify", "original_desen_age.csv", "age"),
    ("T5", "classify", "original_desen_gender.csv", "gender"),
    ("T6", "classify", "original_desen_lifestatus.csv", "life status"),
)
TTL_MANIFEST = Manifest(tuple(TaskSpec(*f) for f in FILES), name="ttl", unseen="error", padded=True)
RELEASE = register_release(Release(
    "ttl", "Tencent TTL (CONURE/PeterRec 'ColdRec' bundle, 6 task files)",
    "https://github.com/fajieyuan/SIGIR2021_Conure",
    "Released by the CONURE/PeterRec authors for research; no licence file accompanies the bundle: do not "
    "redistribute it, cite Yuan et al. (SIGIR 2020, SIGIR 2021).",
    (tuple(f[2] for f in FILES),),
    manual="the CONURE authors' Google Drive bundle https://drive.google.com/file/d/1imhHUsivh6oMEtEW-RwVc4OsDqn-xOaP"
           "/view (linked from TERACON's README)",
))


def manifest_for(folder: Path) -> tuple[Manifest, Path | None]:
    """The built-in TTL manifest, with options from the folder's optional `stream.json`."""
    path = folder / MANIFEST
    if not path.is_file():
        return TTL_MANIFEST, None
    obj = read_json(path)
    allowed = {"unseen", "max_len"}
    if not isinstance(obj, dict) or set(obj) - allowed:
        raise DataFormatError(path, None, f"a TTL folder's {MANIFEST} may only set {sorted(allowed)} (the six TTL "
                                          "tasks are fixed; for other tasks use dataset `custom`)")
    return parse_options(obj, path, TTL_MANIFEST), path


@register_dataset("ttl", "Tencent TTL (CONURE bundle, not downloadable by curb): T1 watching, T2 click, T3 thumb-up, "
                  "T4 age, T5 gender, T6 life status", defaults={"preset": "paper"}, version=VERSION,
                  releases=("ttl",))
def build_ttl(data_dir: Path | None = None) -> TaskStream:
    folders = candidate_dirs("ttl", data_dir)
    for d in folders:
        if RELEASE.layout_in(d):
            manifest, mpath = manifest_for(d)
            return load(d, manifest, mpath, "ttl")
    raise DataNotFoundError(not_found_message("TTL files", ["ttl"], folders))
