"""File-name rules (SPEC rule 8): one safe component, never a path outside the directory."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlman.naming import (
    DEFAULT_NAME,
    choose_name,
    contained,
    name_from_url,
    part_path,
    sanitise_name,
    state_path,
)


@pytest.mark.parametrize("raw, expected", [
    ("report.pdf", "report.pdf"),
    ("a b.txt", "a b.txt"),
    ("../../x", "x"),
    ("/etc/passwd", "passwd"),
    ("..\\..\\windows\\evil.exe", "evil.exe"),
    ("dir/sub\\name.txt", "name.txt"),
    ("a\x00b\x1fc\x7f.txt", "abc.txt"),
    ("line\nbreak\r.txt", "linebreak.txt"),
    ("  padded.txt  ", "padded.txt"),
    (".hidden", "hidden"),
    ("trailing.", "trailing"),
    ("na\u00efve.txt", "na\u00efve.txt"),
])
def test_sanitise_name_keeps_one_safe_component(raw, expected):
    assert sanitise_name(raw) == expected


@pytest.mark.parametrize("raw", [None, "", ".", "..", "...", "/", "a/", "../", "..\\", " ", "\x00\x01", "foo/..", " . "])
def test_sanitise_name_with_nothing_left_is_none(raw):
    assert sanitise_name(raw) is None


def test_sanitise_name_normalises_unicode_to_nfc():
    decomposed = "nai\u0308ve.txt"
    assert sanitise_name(decomposed) == unicodedata.normalize("NFC", decomposed) == "na\u00efve.txt"


def test_very_long_name_is_trimmed_keeping_a_short_extension():
    name = sanitise_name("x" * 400 + ".iso")
    assert len(name.encode()) <= 240
    assert name.endswith(".iso")
    assert name.startswith("xxx")


def test_very_long_multibyte_name_is_trimmed_on_a_character_boundary():
    name = sanitise_name("\u00e9" * 300 + ".tar.gz")
    assert len(name.encode("utf-8")) <= 240
    assert name.endswith(".gz")
    assert set(name[:-3]) == {"\u00e9"}


def test_very_long_name_with_a_long_extension_is_trimmed_whole():
    name = sanitise_name("y" * 300 + "." + "z" * 40)
    assert len(name.encode()) <= 240
    assert name == "y" * 240


def test_sanitise_name_drops_c1_control_characters():
    assert sanitise_name("a\x85b\x9b.txt") == "ab.txt"


@given(st.text())
def test_sanitised_name_is_a_single_safe_component(raw):
    name = sanitise_name(raw)
    if name is None:
        return
    assert name not in ("", ".", "..")
    assert "/" not in name and "\\" not in name
    assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)
    assert not name.startswith(".")
    assert len(name.encode("utf-8")) <= 240


@given(st.text())
def test_sanitised_name_stays_inside_its_directory(raw):
    base = Path("/tmp/dlman-naming-probe/dir")
    name = sanitise_name(raw)
    if name is None:
        return
    target = contained(base, name)
    assert target.parent == base
    assert os.path.commonpath([base, target]) == str(base)


@pytest.mark.parametrize("url, expected", [
    ("https://example.org/files/report.pdf", "report.pdf"),
    ("https://example.org/files/a%20b.txt?x=1#frag", "a b.txt"),
    ("https://example.org/na%C3%AFve.txt", "na\u00efve.txt"),
    ("https://example.org/dir/", None),
    ("https://example.org", None),
    ("https://example.org/", None),
])
def test_name_from_url_is_the_percent_decoded_last_path_segment(url, expected):
    assert name_from_url(url) == expected


def test_choose_name_prefers_filename_star_over_filename_over_url():
    url = "https://example.org/path/from-url.bin"
    both = "attachment; filename=\"plain.bin\"; filename*=UTF-8''star.bin"
    assert choose_name(url, both) == "star.bin"
    assert choose_name(url, 'attachment; filename="plain.bin"') == "plain.bin"
    assert choose_name(url, None) == "from-url.bin"
    assert choose_name(url, "attachment") == "from-url.bin"


def test_choose_name_falls_back_to_index_html():
    assert choose_name("https://example.org/", None) == DEFAULT_NAME == "index.html"
    assert choose_name("https://example.org", "inline") == "index.html"
    assert choose_name("https://example.org/..", 'attachment; filename=".."') == "index.html"


def test_choose_name_sanitises_hostile_names_from_header_and_url():
    assert choose_name("https://e.org/x", 'attachment; filename="../../evil.sh"') == "evil.sh"
    assert choose_name("https://e.org/a%2F..%2F..%2Fevil.sh", None) == "evil.sh"
    assert choose_name("https://e.org/f", "attachment; filename*=UTF-8''..%2F..%2Fevil.sh") == "evil.sh"


def test_choose_name_skips_an_unusable_header_name_for_the_url_name():
    assert choose_name("https://e.org/good.bin", 'attachment; filename="/"') == "good.bin"


@given(url_path=st.text(), disposition=st.one_of(st.none(), st.text()))
def test_choose_name_always_gives_a_safe_name(url_path, disposition):
    from urllib.parse import quote
    name = choose_name("https://example.org/" + quote(url_path), disposition)
    assert name and sanitise_name(name) == name


def test_contained_refuses_names_that_leave_the_directory(tmp_path):
    assert contained(tmp_path, "file.bin") == tmp_path / "file.bin"
    for bad in ("../escape", "/etc/passwd", "..", "a/../../b"):
        with pytest.raises(ValueError):
            contained(tmp_path, bad)


def test_part_and_state_paths_sit_beside_the_destination(tmp_path):
    dest = tmp_path / "big.iso"
    assert part_path(dest) == tmp_path / "big.iso.part"
    assert state_path(dest) == tmp_path / "big.iso.part.state"
