"""turn_core.safety: allowed roots, safe ZIP extraction, spreadsheet-safe cells."""
from __future__ import annotations

import io
import os
import stat
import zipfile

import pytest

from turn_core.errors import InputError
from turn_core.safety import (
    ROOTS_ENV,
    allowed_roots,
    extract_zip_safely,
    resolve_under_roots,
    save_uploaded_files,
    spreadsheet_safe,
)


def _zip(members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _zip_with_info(info: zipfile.ZipInfo, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(info, data)
    return buf.getvalue()


# --------------------------------------------------------------------------- allowed roots
def test_allowed_roots_default_is_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv(ROOTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert allowed_roots() == [tmp_path.resolve()]
    monkeypatch.setenv(ROOTS_ENV, "")
    assert allowed_roots() == [tmp_path.resolve()]


def test_allowed_roots_env_parsing(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.setenv(ROOTS_ENV, f"{a}{os.pathsep}{os.pathsep} {b} {os.pathsep}")
    assert allowed_roots() == [a.resolve(), b.resolve()]


def test_resolve_under_roots_accepts_inside(monkeypatch, tmp_path):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    monkeypatch.setenv(ROOTS_ENV, str(tmp_path / "data"))
    assert resolve_under_roots(tmp_path / "data" / "cats") == (tmp_path / "data" / "cats").resolve()
    # a relative path is relative to the working directory
    monkeypatch.chdir(tmp_path / "data")
    assert resolve_under_roots("cats") == (tmp_path / "data" / "cats").resolve()


def test_resolve_under_roots_refuses_etc(tmp_path):
    with pytest.raises(InputError, match="/etc"):
        resolve_under_roots("/etc", roots=[tmp_path])
    with pytest.raises(InputError, match="outside"):
        resolve_under_roots("/etc/passwd", roots=[tmp_path])


def test_resolve_under_roots_refuses_dotdot(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    sneaky = f"{root}/sub/../../secret"
    with pytest.raises(InputError, match="outside"):
        resolve_under_roots(sneaky, roots=[root])
    # `..` that stays inside is fine
    assert resolve_under_roots(f"{root}/sub/..", roots=[root]) == root.resolve()


def test_resolve_under_roots_refuses_symlink_out(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(InputError, match="link"):
        resolve_under_roots(root / "link", roots=[root])


def test_resolve_under_roots_missing_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve_under_roots(tmp_path / "nope", roots=[tmp_path])
    # outside *and* missing: refused as outside, not revealing whether it exists
    with pytest.raises(InputError, match="outside"):
        resolve_under_roots("/definitely/not/here", roots=[tmp_path])
    with pytest.raises(InputError):
        resolve_under_roots("  ", roots=[tmp_path])


# --------------------------------------------------------------------------- zip extraction
def test_good_zip_single_folder(tmp_path):
    data = _zip({"pets/cat/1.png": b"a", "pets/dog/2.png": b"bb", "__MACOSX/pets/._1.png": b"x",
                 "pets/.DS_Store": b"x"})
    out = extract_zip_safely(data, tmp_path / "up")
    assert out == (tmp_path / "up" / "pets").resolve()
    assert (out / "cat" / "1.png").read_bytes() == b"a"
    assert (out / "dog" / "2.png").read_bytes() == b"bb"
    assert not (tmp_path / "up" / "__MACOSX").exists()
    assert not (out / ".DS_Store").exists()


def test_good_zip_from_path_and_filelike_several_top_level(tmp_path):
    data = _zip({"cat/1.png": b"a", "dog/2.png": b"b", "labels.csv": b"path,label\n"})
    p = tmp_path / "u.zip"
    p.write_bytes(data)
    out = extract_zip_safely(p, tmp_path / "a")
    assert out == (tmp_path / "a").resolve()
    assert sorted(x.name for x in out.iterdir()) == ["cat", "dog", "labels.csv"]
    out2 = extract_zip_safely(io.BytesIO(data), tmp_path / "b")
    assert (out2 / "dog" / "2.png").read_bytes() == b"b"


def test_zip_slip_refused(tmp_path):
    data = _zip({"ok.png": b"a", "../../evil.txt": b"pwned"})
    with pytest.raises(InputError, match=r"\.\./\.\./evil\.txt"):
        extract_zip_safely(data, tmp_path / "up")
    assert not (tmp_path / "evil.txt").exists()
    # checked before anything is written
    assert not (tmp_path / "up" / "ok.png").exists()


def test_zip_slip_backslash_refused(tmp_path):
    data = _zip({"a\\..\\..\\evil.txt": b"pwned"})
    with pytest.raises(InputError, match="evil"):
        extract_zip_safely(data, tmp_path / "up")


def test_absolute_member_refused(tmp_path):
    data = _zip({"/tmp/evil.txt": b"pwned"})
    with pytest.raises(InputError, match="absolute"):
        extract_zip_safely(data, tmp_path / "up")
    data = _zip({"C:/evil.txt": b"pwned"})
    with pytest.raises(InputError, match="absolute"):
        extract_zip_safely(data, tmp_path / "up")


def test_symlink_member_refused(tmp_path):
    info = zipfile.ZipInfo("pets/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    data = _zip_with_info(info, b"/etc/passwd")
    with pytest.raises(InputError, match="pets/link.*symbolic link"):
        extract_zip_safely(data, tmp_path / "up")
    assert not (tmp_path / "up" / "pets" / "link").exists()


def test_too_many_files_refused(tmp_path):
    data = _zip({f"f/{i}.png": b"x" for i in range(11)})
    with pytest.raises(InputError, match="11 entries"):
        extract_zip_safely(data, tmp_path / "up", max_files=10)
    extract_zip_safely(data, tmp_path / "ok", max_files=11)


def test_total_size_refused(tmp_path):
    data = _zip({"a.bin": os.urandom(3000), "b.bin": os.urandom(3000)})
    with pytest.raises(InputError, match="unpack"):
        extract_zip_safely(data, tmp_path / "up", max_total_bytes=5000)


def test_bomb_ratio_refused(tmp_path):
    data = _zip({"bomb.bin": b"\0" * (8 * 1024 * 1024)})
    assert len(data) < 100_000
    with pytest.raises(InputError, match="bomb.bin.*zip bomb"):
        extract_zip_safely(data, tmp_path / "up")
    assert not (tmp_path / "up" / "bomb.bin").exists()
    # same archive is fine when the operator raises the ratio limit
    extract_zip_safely(data, tmp_path / "ok", max_ratio=10_000)
    assert (tmp_path / "ok" / "bomb.bin").stat().st_size == 8 * 1024 * 1024


def test_lying_size_caught_while_streaming(tmp_path):
    data = bytearray(_zip({"x.bin": b"A" * 4096}, compression=zipfile.ZIP_STORED))
    # shrink the declared uncompressed size in the central directory to 10 bytes
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.infolist()[0]
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    with pytest.raises(InputError, match="x.bin"):
        extract_zip_safely(bytes(data), tmp_path / "up")
    assert not (tmp_path / "up" / "x.bin").exists() or (tmp_path / "up" / "x.bin").stat().st_size <= 10
    assert info.file_size == 4096


def test_not_a_zip(tmp_path):
    with pytest.raises(InputError, match="not a valid ZIP"):
        extract_zip_safely(b"hello", tmp_path / "up")


# --------------------------------------------------------------------------- folder uploads
def _uploads(files: dict[str, bytes]) -> list[io.BytesIO]:
    """Stand-ins for Streamlit's UploadedFile: a BytesIO with the browser's relative name."""
    out = []
    for name, data in files.items():
        f = io.BytesIO(data)
        f.name = name
        out.append(f)
    return out


def test_uploaded_folder_saved_and_single_top_folder_returned(tmp_path):
    root = save_uploaded_files(_uploads({"pets/cat/1.png": b"c1", "pets/dog/2.png": b"d2",
                                         "pets/.DS_Store": b"x", "__MACOSX/pets/._1.png": b"y"}),
                               tmp_path / "up")
    assert root == (tmp_path / "up" / "pets").resolve()
    assert (root / "cat" / "1.png").read_bytes() == b"c1" and (root / "dog" / "2.png").read_bytes() == b"d2"
    assert not (root / ".DS_Store").exists() and not (tmp_path / "up" / "__MACOSX").exists()


def test_uploaded_files_without_one_top_folder_load_from_dest(tmp_path):
    root = save_uploaded_files(_uploads({"cat/1.png": b"c", "dog/2.png": b"d"}), tmp_path / "up")
    assert root == (tmp_path / "up").resolve()


@pytest.mark.parametrize("name,why", [("../evil.png", "'..'"), ("a/../../evil.png", "'..'"),
                                      ("..\\evil.png", "'..'"), ("/etc/evil.png", "absolute"),
                                      ("C:/evil.png", "absolute")])
def test_uploaded_file_names_cannot_climb_out(tmp_path, name, why):
    with pytest.raises(InputError, match=why) as e:
        save_uploaded_files(_uploads({"ok/1.png": b"1", name: b"x"}), tmp_path / "up")
    assert name in str(e.value)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_uploaded_folder_limits(tmp_path):
    with pytest.raises(InputError, match="no usable files"):
        save_uploaded_files(_uploads({".DS_Store": b"x"}), tmp_path / "a")
    with pytest.raises(InputError, match="at most 2"):
        save_uploaded_files(_uploads({f"c/{i}.png": b"x" for i in range(3)}), tmp_path / "b", max_files=2)
    with pytest.raises(InputError, match="larger than"):
        save_uploaded_files(_uploads({"c/1.png": b"x" * 10}), tmp_path / "c", max_total_bytes=5)


# --------------------------------------------------------------------------- spreadsheet cells
@pytest.mark.parametrize("text", ["=1+1", "+1", "-5", "@SUM(A1)", "\tx", "\rx", "=HYPERLINK(\"x\")"])
def test_spreadsheet_safe_escapes_formulas(text):
    assert spreadsheet_safe(text) == "'" + text


@pytest.mark.parametrize("value", ["cat", "", "a=b", "café", -0.5, -3, 0, None, True])
def test_spreadsheet_safe_leaves_the_rest(value):
    assert spreadsheet_safe(value) == value
    assert type(spreadsheet_safe(value)) is type(value)
