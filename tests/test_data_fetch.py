"""`curb data fetch` against a loopback HTTP server and file:// URLs started by the test: a good
download installs; a corrupted, interrupted or aborted one leaves the destination untouched."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile

import pytest

import curb.data as data
import curb.fetch as fetch
from curb.cli import main
from curb.data import get_dataset, get_release
from test_data_movielens import make_ratings, users_for, write_release


def zip_release(tmp_path) -> bytes:
    """An archive laid out like GroupLens' ml-100k.zip (a top folder `ml-100k/`)."""
    src = write_release(tmp_path / "src" / "ml-100k", "ml-100k", make_ratings(), users_for(24))
    (src / "README").write_text("tiny test copy\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(src.iterdir()):
            z.write(p, f"ml-100k/{p.name}")
    return buf.getvalue()


class Server:
    """Serves `body` at any path; `cut` sends only that many bytes while announcing them all."""

    def __init__(self):
        self.body, self.cut = b"", None
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body[: outer.cut] if outer.cut is not None else outer.body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ml-100k.zip"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A served test archive whose md5 is pinned in place of GroupLens' for this test only."""
    archive = zip_release(tmp_path)
    server = Server()
    server.body = archive
    rel = dataclasses.replace(get_release("ml-100k"), url=server.url, md5=hashlib.md5(archive).hexdigest())
    monkeypatch.setitem(data._RELEASES, "ml-100k", rel)
    root = tmp_path / "root"
    monkeypatch.setenv("CURB_DATA", str(root))
    yield server, archive, root, rel
    server.close()


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))} \
        if root.exists() else None


def test_fetch_installs_and_the_dataset_finds_it(env, capsys):
    server, archive, root, rel = env
    assert main(["data", "fetch", "ml-100k"]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["ml-100k"]  # no staging leftovers
    assert {"u.data", "u.user", "README"} <= {p.name for p in (root / "ml-100k").iterdir()}
    assert f"md5 verified: {rel.md5}" in capsys.readouterr().out
    assert get_dataset("ml-profile").build(None).meta["release"] == "ml-100k"
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert any(l.split()[:3] == ["ml-100k", "present", str(root / "ml-100k")] for l in out.splitlines())
    assert main(["data", "fetch", "ml-100k"]) == 0 and "already installed" in capsys.readouterr().out


def test_corrupted_download_leaves_the_cache_untouched(env, capsys):
    server, archive, root, rel = env
    server.body = archive[:-40] + bytes(b ^ 0xFF for b in archive[-40:])
    assert main(["data", "fetch", "ml-100k"]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and rel.md5 in err and "Nothing was installed" in err
    assert snapshot(root) == {}  # the root was created for staging, and nothing is left in it
    server.body = archive
    assert main(["data", "fetch", "ml-100k"]) == 0
    before = snapshot(root)
    server.body = archive[:-40] + bytes(40)
    assert main(["data", "fetch", "ml-100k", "--force"]) == 2  # a reinstall that fails keeps the old one
    assert snapshot(root) == before


def test_interrupted_download_leaves_the_cache_untouched(env, capsys):
    server, archive, root, rel = env
    server.cut = len(archive) // 2
    assert main(["data", "fetch", "ml-100k"]) == 2
    assert f"interrupted: received {len(archive) // 2:,} of {len(archive):,} bytes" in capsys.readouterr().err
    assert snapshot(root) == {}


def test_abort_during_install_leaves_the_cache_untouched(env, monkeypatch):
    server, archive, root, rel = env
    assert main(["data", "fetch", "ml-100k"]) == 0
    before = snapshot(root)

    def abort(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "_unpack", abort)
    with pytest.raises(KeyboardInterrupt):
        fetch.install(rel, force=True, echo=lambda *_: None)
    assert snapshot(root) == before


def test_file_url_and_local_archive_or_folder(env, tmp_path, capsys):
    server, archive, root, rel = env
    local = tmp_path / "copy.zip"
    local.write_bytes(archive)
    assert main(["data", "fetch", "ml-100k", "--url", local.as_uri()]) == 0
    assert main(["data", "fetch", "ml-100k", "--from", str(local), "--force"]) == 0
    src = tmp_path / "src" / "ml-100k"
    for p in [*src.iterdir(), src]:
        p.chmod(0o555 if p.is_dir() else 0o444)  # like a read-only shared copy
    assert main(["data", "fetch", "ml-100k", "--from", str(tmp_path / "src"), "--force"]) == 0  # a folder
    src.chmod(0o755)
    assert (root / "ml-100k" / "u.data").read_bytes() == (src / "u.data").read_bytes()
    assert all(p.stat().st_mode & 0o200 for p in [root / "ml-100k", *(root / "ml-100k").iterdir()])
    bad = tmp_path / "other.zip"
    bad.write_bytes(archive + b"\0")
    capsys.readouterr()
    assert main(["data", "fetch", "ml-100k", "--from", str(bad), "--force"]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert main(["data", "fetch", "ml-100k", "--from", str(bad), "--force", "--no-verify"]) == 0


def test_unsafe_or_incomplete_archives_are_refused(env, tmp_path, capsys):
    server, archive, root, rel = env
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.txt", "x")
    assert main(["data", "fetch", "ml-100k", "--from", str(evil), "--no-verify"]) == 2
    assert "unsafe member path '../escape.txt'" in capsys.readouterr().err
    assert not (root / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("ml-100k/README", "no data")
    assert main(["data", "fetch", "ml-100k", "--from", str(empty), "--no-verify"]) == 2
    assert "no folder under the unpacked files holds the ml-100k files" in capsys.readouterr().err
    assert snapshot(root) == {}
    (root / "ml-100k").mkdir()
    (root / "ml-100k" / "mine.txt").write_text("keep")
    assert main(["data", "fetch", "ml-100k"]) == 2
    assert "does not hold a complete ml-100k release" in capsys.readouterr().err
    assert (root / "ml-100k" / "mine.txt").read_text() == "keep"


def test_names_that_cannot_be_fetched(capsys):
    assert main(["data", "fetch", "ml"]) == 2
    assert "'ml' is a dataset, not a release; fetch one of the releases it reads: ml-1m, ml-100k, ml-25m" in \
        capsys.readouterr().err
    assert main(["data", "fetch", "ttl"]) == 2
    err = capsys.readouterr().err
    assert "curb cannot download ttl" in err and "`curb data fetch ttl --from PATH`" in err
    assert main(["data", "fetch", "ml-2m"]) == 2
    assert "unknown release 'ml-2m'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_that_unpacks_beyond_the_limits_is_refused_before_writing(env, tmp_path, capsys, monkeypatch, kind):
    """A zip bomb: a few kB that unpack to far more than any release (limits lowered for speed)."""
    server, archive, root, rel = env
    monkeypatch.setattr(fetch, "RATIO_FLOOR", 1 << 20)
    bomb = tmp_path / f"bomb.{kind}"
    zeros = bytes(4 << 20)  # 4 MiB of zeros pack into a few kB: a ratio of about 1000
    if kind == "zip":
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("ml-100k/u.data", zeros)
    else:
        with tarfile.open(bomb, "w:gz") as t:
            info = tarfile.TarInfo("ml-100k/u.data")
            info.size = len(zeros)
            t.addfile(info, io.BytesIO(zeros))
    assert main(["data", "fetch", "ml-100k", "--from", str(bomb), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to unpack {len(zeros):,} bytes from a {bomb.stat().st_size:,}-byte archive" in err
    assert "--from FOLDER" in err and snapshot(root) == {}
    monkeypatch.setattr(fetch, "MAX_UNPACKED", 1 << 20)  # and the absolute cap, for a well-compressed big one
    monkeypatch.setattr(fetch, "RATIO_FLOOR", 16 << 20)
    assert main(["data", "fetch", "ml-100k", "--from", str(bomb), "--no-verify"]) == 2
    assert "limits: 1,048,576 bytes" in capsys.readouterr().err
