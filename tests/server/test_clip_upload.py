"""server/clip_upload.py: an uploaded clip's files land in a private folder in order, exactly as
announced; anything else is refused by name and the folder goes."""
from __future__ import annotations

import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from server.clip_upload import ClipUpload
from server.errors import ServerError


@pytest.fixture
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_the_files_arrive_in_order_and_the_folder_goes_on_discard(temp: Path) -> None:
    upload = ClipUpload({"files": ["0001.png", "0002.png"], "sizes": [3, 2]})
    assert upload.folder.parent == temp and not upload.movie and upload.path == upload.folder
    upload.write(0, b"ab")
    upload.write(0, b"c")
    assert not upload.complete
    upload.write(1, b"de")
    assert upload.complete
    assert (upload.folder / "0001.png").read_bytes() == b"abc"
    assert (upload.folder / "0002.png").read_bytes() == b"de"
    upload.discard()
    upload.discard()
    assert not upload.folder.exists()
    with pytest.raises(ServerError, match="was ended"):
        upload.write(1, b"x")


def test_a_movie_is_one_file_and_its_path_is_the_file(temp: Path) -> None:
    upload = ClipUpload({"files": ["walk.MP4"], "sizes": [4]})
    upload.write(0, b"1234")
    assert upload.movie and upload.path == upload.folder / "walk.MP4" and upload.path.read_bytes() == b"1234"
    upload.discard()


@pytest.mark.parametrize("upload,needle", [
    ({"files": ["a.mp4"]}, "'files' and 'sizes'"),
    ({"files": ["a.mp4"], "sizes": [1, 2]}, "same length"),
    ({"files": [], "sizes": []}, "1 to"),
    ({"files": ["../a.mp4"], "sizes": [1]}, "not a plain file name"),
    ({"files": ["a\\b.png"], "sizes": [1]}, "not a plain file name"),
    ({"files": [".."], "sizes": [1]}, "not a plain file name"),
    ({"files": [5], "sizes": [1]}, "not a plain file name"),
    ({"files": ["a.png", "A.PNG"], "sizes": [1, 1]}, "unique"),
    ({"files": ["a.png"], "sizes": [0]}, ">= 1"),
    ({"files": ["a.png"], "sizes": [True]}, ">= 1"),
    ({"files": ["a.mp4", "b.mp4"], "sizes": [1, 1]}, "one movie"),
    ({"files": ["notes.txt"], "sizes": [1]}, "one movie"),
    ({"files": ["a.mp4"], "sizes": [11]}, "more than this server takes"),
])
def test_a_bad_announcement_is_refused_before_anything_is_written(temp: Path, upload, needle) -> None:
    with pytest.raises(ServerError, match=re.escape(needle)):
        ClipUpload(upload, max_bytes=10)
    assert list(temp.iterdir()) == []


def test_a_clip_larger_than_the_free_disk_is_refused_and_leaves_nothing(temp: Path, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 9 << 30, 1 << 30))
    with pytest.raises(ServerError, match="1.0 GiB free"):
        ClipUpload({"files": ["a.mp4"], "sizes": [100]})
    assert list(temp.iterdir()) == []


def test_the_disk_check_counts_the_bytes_other_uploads_still_have_to_send(temp: Path, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 0, (1 << 30) + 100))
    first = ClipUpload({"files": ["a.mp4"], "sizes": [60]})
    with pytest.raises(ServerError, match="promised to other uploads"):
        ClipUpload({"files": ["b.mp4"], "sizes": [60]})
    first.discard()
    ClipUpload({"files": ["b.mp4"], "sizes": [60]}).discard()
    assert list(temp.iterdir()) == []


@pytest.mark.parametrize("writes,needle", [
    ([(1, b"x")], "expected bytes of file 0, got file 1"),
    ([(0, b"abcd")], "longer than its announced 3 bytes"),
    ([(0, b"ab"), (1, b"x")], "expected bytes of file 0, got file 1"),
    ([(0, b"abc"), (2, b"x")], "expected bytes of file 1, got file 2"),
    ([(0, b"abc"), (1, b"xy"), (1, b"z")], "2.png is longer than its announced 2 bytes"),
    ([(0, b"abc"), (1, b"xy"), (3, b"z")], "the clip has 3 file(s), no file 3"),
])
def test_bytes_out_of_order_or_beyond_a_file_are_refused(temp: Path, writes, needle) -> None:
    upload = ClipUpload({"files": ["1.png", "2.png", "3.png"], "sizes": [3, 2, 1]})
    with pytest.raises(ServerError, match=re.escape(needle)):
        for file, data in writes:
            upload.write(file, data)
    upload.discard()
