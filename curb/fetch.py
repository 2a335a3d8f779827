"""`curb data fetch`: download (or take from a local path), verify, and install a release.

Everything is staged in a hidden folder next to the destination (same file system): the
archive is downloaded to a temporary file, its checksum verified, it is unpacked, the release's
files are checked, and only then is the folder renamed into place, so a failed, corrupted or
interrupted fetch leaves the cache exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from .data import Release, data_home, file_digest
from .errors import CurbError


class FetchError(CurbError, RuntimeError):
    """A download or install failed; nothing was changed in the destination."""


def download(url: str, dest: Path, progress: bool = True, timeout: float = 60) -> int:
    """Stream `url` into `dest`; fail when the connection ends before the announced length."""
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length")
            total = int(total) if total else None
            got = 0
            with open(dest, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                             desc=Path(urllib.parse.urlparse(url).path).name or url,
                                             disable=None if progress else True, leave=False) as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise FetchError(f"download of {url} failed: {getattr(e, 'reason', e)}") from None
    if total is not None and got != total:
        raise FetchError(f"download of {url} was interrupted: received {got:,} of {total:,} bytes")
    return got


def verify(archive: Path, release: Release, check: bool, origin: str) -> None:
    if not check:
        return
    if release.md5 is None:
        raise FetchError(f"no published checksum is pinned for {release.name}, so {origin} cannot be verified; "
                         "pass --no-verify to install it anyway")
    got = file_digest(archive, "md5")
    if got != release.md5:
        raise FetchError(f"checksum mismatch for {origin}: md5 {got}, expected {release.md5} (published at "
                         f"{release.md5_source}); the file is corrupted or not the official archive. Nothing was "
                         "installed.")


# Limits on what an archive may unpack to, checked before anything is written (a "zip bomb" of a
# few hundred kB can expand to many GB). The largest release curb knows, ML-25M, unpacks to
# about 1.2 GB from 250 MB (ratio 5); text files of ids rarely compress better than 20:1.
MAX_UNPACKED = 32 << 30  # bytes
MAX_RATIO = 100  # unpacked bytes per archive byte, for archives unpacking to more than RATIO_FLOOR
RATIO_FLOOR = 16 << 20  # small archives are exempt: a few MB of zeros compress 1000:1 harmlessly


def check_unpacked_size(archive: Path, sizes: list[int]) -> None:
    """Refuse an archive whose members (sizes as its headers declare them; zipfile and tarfile
    never extract more than declared) add up to more than the limits."""
    total, packed = sum(sizes), max(archive.stat().st_size, 1)
    if total > MAX_UNPACKED or (total > RATIO_FLOOR and total > MAX_RATIO * packed):
        raise FetchError(f"{archive}: refusing to unpack {total:,} bytes from a {packed:,}-byte archive (limits: "
                         f"{MAX_UNPACKED:,} bytes, {MAX_RATIO}x the archive); if it is genuine, unpack it yourself "
                         "and install the folder with --from FOLDER")


def _unpack(archive: Path, into: Path) -> None:
    """Unpack a .zip or .tar[.gz] refusing members that would land outside `into`, links and
    special files, and archives unpacking to more than the size limits."""
    root = into.resolve()

    def safe(name: str) -> None:
        target = (root / name).resolve()
        if target != root and root not in target.parents:
            raise FetchError(f"{archive}: unsafe member path {name!r}")

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                infos = z.infolist()
                for i in infos:
                    safe(i.filename)
                check_unpacked_size(archive, [i.file_size for i in infos])
                z.extractall(into)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for m in members:
                    safe(m.name)
                    if not (m.isfile() or m.isdir()):
                        raise FetchError(f"{archive}: refusing link or special member {m.name!r}")
                check_unpacked_size(archive, [m.size for m in members])
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                t.extractall(into, members=members, **extra)
        else:
            raise FetchError(f"{archive} is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise FetchError(f"{archive}: damaged archive ({e})") from None


def _release_folder(root: Path, release: Release) -> Path:
    """The folder under `root` (itself or a descendant) that holds a complete layout."""
    for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if release.layout_in(d):
            return d
    want = " or ".join("+".join(layout) for layout in release.layouts)
    raise FetchError(f"no folder under the unpacked files holds the {release.name} files ({want})")


def install(release: Release, source: str | Path | None = None, dest_root: Path | None = None, *,
            url: str | None = None, force: bool = False, check: bool = True, progress: bool = True,
            echo: Callable[[str], None] = print) -> Path:
    """Install `release` into `<dest_root>/<release.name>` and return that folder.

    `source`: a local archive or folder (default: download `url` or the release's official URL).
    An existing complete install is kept unless `force`.
    """
    dest_root = Path(dest_root) if dest_root is not None else data_home()
    target = dest_root / release.name
    if release.layout_in(target) and not force:
        echo(f"{release.name} is already installed in {target} (use --force to reinstall)")
        return target
    if target.exists() and not force:
        raise FetchError(f"{target} exists but does not hold a complete {release.name} release; remove it or pass "
                         "--force to replace it")
    echo(f"{release.title}. Terms: {release.terms}")
    if source is None and not (url or release.url):
        raise FetchError(f"curb cannot download {release.name}: get {release.manual or release.homepage} yourself, "
                         f"then run `curb data fetch {release.name} --from PATH` (an archive or the unpacked folder)")
    try:
        dest_root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{release.name}.staging-", dir=dest_root))
    except OSError as e:
        raise FetchError(f"cannot write to {dest_root} ({e.strerror}); set CURB_DATA to a writable folder") from None
    try:
        if source is not None and Path(source).is_dir():
            folder = _release_folder(Path(source), release)
            new = stage / release.name
            shutil.copytree(folder, new)
            for p in [new, *new.rglob("*")]:  # a read-only source must not make the cache undeletable
                p.chmod(p.stat().st_mode | 0o200)
            echo(f"copied {folder} -> staging")
        else:
            if source is not None:
                archive = Path(source)
                if not archive.is_file():
                    raise FetchError(f"--from {source}: no such file or folder")
                verify(archive, release, check, str(archive))
            else:
                link = url or release.url
                archive = stage / "download"
                echo(f"downloading {link}")
                download(link, archive, progress)
                verify(archive, release, check, link)
            if check and release.md5:
                echo(f"md5 verified: {release.md5}")
            unpacked = stage / "unpacked"
            _unpack(archive, unpacked)
            new = _release_folder(unpacked, release)
        if not release.layout_in(new):
            raise FetchError(f"the installed files do not form a complete {release.name} release")
        old = stage / "previous"
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(new, target)
        except OSError:
            if old.exists():
                os.replace(old, target)
            raise
    except OSError as e:
        raise FetchError(f"installing {release.name} into {target} failed ({e}); nothing was changed") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    echo(f"installed {release.name} in {target}")
    return target
