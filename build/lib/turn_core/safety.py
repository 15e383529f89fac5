"""Guards for input that comes from a browser: server paths, uploaded ZIPs, spreadsheet cells.

The app runs on a server and people type paths and upload archives into it, so three things
must hold whatever they send:

* a typed path can only reach folders the operator allowed (``allowed_roots``,
  ``resolve_under_roots``): nobody browses ``/etc`` or follows a symlink out of the data folder;
* an uploaded ZIP cannot write outside its extraction folder (zip slip), plant symlinks, or
  fill the disk (zip bomb) (``extract_zip_safely``); nor can the files of an uploaded folder,
  whose names come from the browser (``save_uploaded_files``);
* a label that starts with ``=`` is not run as a formula when the exported CSV is opened in a
  spreadsheet (``spreadsheet_safe``).

Every refusal is an ``InputError`` whose one-line message names the path or archive member.
"""
from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .errors import InputError

ROOTS_ENV = "TURN_AUDIT_DATA_ROOTS"

GiB = 1024 ** 3
# Below this size a member's compression ratio says nothing: a few KiB of zeros compress
# 500-fold and are harmless. Bombs need volume, so the ratio check starts here.
_RATIO_CHECK_MIN_BYTES = 1024 * 1024
# Archive clutter from macOS Finder: resource forks that would otherwise be loaded as broken
# "images" and would hide the archive's single top-level folder.
_IGNORED_TOP_LEVEL = {"__MACOSX"}
_IGNORED_NAMES = {".DS_Store"}
_CHUNK = 1024 * 1024


# --------------------------------------------------------------------------- server paths
def allowed_roots() -> list[Path]:
    """Folders the app may read from, resolved (symlinks followed).

    From the environment variable ``TURN_AUDIT_DATA_ROOTS`` (``os.pathsep``-separated, i.e.
    ``:`` on Linux/macOS, ``;`` on Windows; ``~`` expanded; empty entries ignored). When it is
    unset or empty: the current working directory, i.e. the folder the app was started in.
    """
    raw = os.environ.get(ROOTS_ENV, "")
    entries = [e.strip() for e in raw.split(os.pathsep) if e.strip()]
    if not entries:
        return [Path.cwd().resolve()]
    return [Path(e).expanduser().resolve() for e in entries]


def resolve_under_roots(path: str | os.PathLike, roots: list[Path] | None = None) -> Path:
    """``path`` fully resolved (symlinks, ``..``), checked to lie inside one of ``roots``.

    ``roots`` defaults to ``allowed_roots()``. A relative path is taken relative to the current
    working directory. Raises ``InputError`` naming the path when it resolves outside every
    root or does not exist.

    The containment check comes first and uses the non-strict resolution, so a path outside
    the roots is refused the same way whether or not it exists (the answer must not reveal
    which files exist elsewhere on the server).
    """
    text = str(path).strip()
    if not text:
        raise InputError("no path given")
    roots = [Path(r).resolve() for r in (roots if roots is not None else allowed_roots())]
    candidate = Path(text).expanduser()
    try:
        loose = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as e:  # RuntimeError: symlink loop on older Pythons
        raise InputError(f"cannot resolve path {text}: {e}") from None
    if not any(_is_within(loose, r) for r in roots):
        raise InputError(f"{text} is outside the folders this server may read "
                         f"({', '.join(str(r) for r in roots)}); the operator can allow more "
                         f"with {ROOTS_ENV}")
    try:
        resolved = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise InputError(f"{text} does not exist") from None
    except (OSError, RuntimeError) as e:
        raise InputError(f"cannot open {text}: {e}") from None
    # Re-check: strict resolution can differ when a component appeared meanwhile (a race).
    if not any(_is_within(resolved, r) for r in roots):
        raise InputError(f"{text} is outside the folders this server may read")
    return resolved


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# --------------------------------------------------------------------------- ZIP uploads
def extract_zip_safely(zip_file: str | os.PathLike | bytes | IO[bytes], dest_dir: str | os.PathLike,
                       *, max_files: int = 50_000, max_total_bytes: int = 2 * GiB,
                       max_ratio: float = 200) -> Path:
    """Extract an uploaded archive into ``dest_dir``, refusing anything dangerous.

    ``zip_file`` is a path, the archive's bytes, or a binary file-like object (e.g. Streamlit's
    ``UploadedFile``). Every member is checked before anything is written; ``InputError``
    naming the member when one is an absolute path, climbs out with ``..`` (zip slip), is a
    symlink or other special file, or is encrypted; and naming the archive when it has more
    than ``max_files`` members, more than ``max_total_bytes`` uncompressed, or a member (or the
    whole) that expands more than ``max_ratio`` times (zip bomb). While extracting, bytes are
    counted again, since the sizes in the archive's directory could lie.

    Only regular files are written (directories are created as needed). macOS ``__MACOSX/``
    and ``.DS_Store`` clutter is skipped.

    Returns the folder to load: the archive's single top-level folder when it has exactly
    one (the usual "zip of a folder"), else ``dest_dir`` itself.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    source: Any = io.BytesIO(zip_file) if isinstance(zip_file, (bytes, bytearray, memoryview)) else zip_file
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile:
        raise InputError("the upload is not a valid ZIP archive") from None
    except FileNotFoundError:
        raise InputError(f"ZIP archive {zip_file} does not exist") from None

    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise InputError(f"the ZIP archive has {len(infos)} entries; at most {max_files} are allowed")
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        total = 0
        total_compressed = 0
        for info in infos:
            rel = _safe_member_path(info)
            if rel is None:
                continue
            if info.is_dir():
                plan.append((info, rel))
                continue
            total += info.file_size
            total_compressed += info.compress_size
            if (info.file_size >= _RATIO_CHECK_MIN_BYTES
                    and info.file_size > max_ratio * max(info.compress_size, 1)):
                raise InputError(f"ZIP member {info.filename} expands {info.file_size / max(info.compress_size, 1):.0f}"
                                 f"-fold (limit {max_ratio:g}); refusing a possible zip bomb")
            plan.append((info, rel))
        if total > max_total_bytes:
            raise InputError(f"the ZIP archive would unpack to {total / GiB:.2f} GiB; "
                             f"the limit is {max_total_bytes / GiB:.2f} GiB")
        if total >= _RATIO_CHECK_MIN_BYTES and total > max_ratio * max(total_compressed, 1):
            raise InputError(f"the ZIP archive expands {total / max(total_compressed, 1):.0f}-fold "
                             f"(limit {max_ratio:g}); refusing a possible zip bomb")

        written = 0
        tops: set[str] = set()
        for info, rel in plan:
            target = dest.joinpath(*rel.parts)
            # Defence in depth: the name checks above should make this impossible.
            if not _is_within(target.resolve(strict=False), dest):
                raise InputError(f"ZIP member {info.filename} would be written outside the upload folder")
            tops.add(rel.parts[0])
            try:
                (target if info.is_dir() else target.parent).mkdir(parents=True, exist_ok=True)
            except OSError as e:  # e.g. "a" is a file and "a/b" a member
                raise InputError(f"cannot extract ZIP member {info.filename}: {e}") from None
            if info.is_dir():
                continue
            written = _copy_member(zf, info, target, written, max_total_bytes)

    return _folder_to_load(dest, tops)


def _folder_to_load(dest: Path, tops: set[str]) -> Path:
    """"Upload of one folder" → load that folder; a single top-level *file* is not a folder."""
    if len(tops) == 1:
        only = dest / next(iter(tops))
        if only.is_dir():
            return only
    return dest


def _safe_member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's relative path, None for skipped clutter; InputError for a dangerous one."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise InputError(f"ZIP member {name} is encrypted; upload an unencrypted archive")
    mode = (info.external_attr >> 16) & 0xFFFF
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise InputError(f"ZIP member {name} is a symbolic link; links are not allowed in uploads")
    # mode 0 = archive made without Unix attributes (e.g. on Windows): a plain file or folder.
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InputError(f"ZIP member {name} is not a regular file")
    return _safe_relative_path(name, "ZIP member")


def _safe_relative_path(name: str, what: str) -> PurePosixPath | None:
    """``name`` (from an archive or a browser) as a relative path that stays inside its folder;
    None for skipped clutter; ``InputError`` naming ``what`` and the name for a dangerous one."""
    # Windows tools may write backslashes; treat them as separators so "..\\x" is caught too.
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) >= 2 and norm[1] == ":"):
        raise InputError(f"{what} {name} has an absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InputError(f"{what} {name} climbs out of its folder with '..'")
    if "\x00" in norm:
        raise InputError(f"{what} {name!r} has a NUL character in its name")
    if not parts or parts[0] in _IGNORED_TOP_LEVEL or parts[-1] in _IGNORED_NAMES:
        return None
    return PurePosixPath(*parts)


# --------------------------------------------------------------------------- folder uploads
def save_uploaded_files(files: Iterable[Any], dest_dir: str | os.PathLike, *, max_files: int = 50_000,
                        max_total_bytes: int = 2 * GiB) -> Path:
    """Write the files of an uploaded folder under ``dest_dir``, refusing dangerous names.

    ``files``: objects with ``.name`` (the path inside the folder the browser sent, e.g.
    ``"pets/cat/1.png"``) and ``.getvalue()`` (their bytes), such as Streamlit's
    ``UploadedFile``. The names get the same checks as ZIP members (``InputError`` naming the
    file for an absolute path or ``..``; macOS clutter skipped); more than ``max_files`` files
    or ``max_total_bytes`` bytes is refused, and so is an upload with no usable file.

    Returns the folder to load: the upload's single top-level folder when it has exactly one,
    else ``dest_dir`` itself (the same rule as ``extract_zip_safely``)."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    tops: set[str] = set()
    total = count = 0
    for f in files:
        rel = _safe_relative_path(str(f.name), "uploaded file")
        if rel is None:
            continue
        data = f.getvalue()
        count, total = count + 1, total + len(data)
        if count > max_files:
            raise InputError(f"the upload has more than {max_files} files; at most {max_files} are allowed")
        if total > max_total_bytes:
            raise InputError(f"the upload is larger than {max_total_bytes / GiB:.2f} GiB, the limit")
        target = dest.joinpath(*rel.parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as e:  # e.g. "a" uploaded as a file and "a/b" as well
            raise InputError(f"cannot save uploaded file {f.name}: {e}") from None
        tops.add(rel.parts[0])
    if not count:
        raise InputError("the uploaded folder contained no usable files")
    return _folder_to_load(dest, tops)


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int,
                 max_total_bytes: int) -> int:
    """Stream one member to ``target``; returns the running byte count of the extraction."""
    n = 0
    try:
        with zf.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(_CHUNK):
                n += len(chunk)
                written += len(chunk)
                if n > info.file_size or written > max_total_bytes:
                    raise InputError(f"ZIP member {info.filename} unpacks to more bytes than the "
                                     f"archive declares; refusing a possible zip bomb")
                out.write(chunk)
    except InputError:
        target.unlink(missing_ok=True)
        raise
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        target.unlink(missing_ok=True)
        raise InputError(f"cannot extract ZIP member {info.filename}: {e}") from None
    return written


# --------------------------------------------------------------------------- spreadsheets
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value`` made harmless for a spreadsheet: a text cell starting with ``= + - @``, a tab
    or a carriage return gets a leading ``'`` (OWASP CSV-injection rule), so Excel / LibreOffice
    / Sheets show it as text instead of evaluating it. Numbers (and anything not a ``str``) are
    returned unchanged, so ``-0.5`` stays a number.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


__all__ = ["ROOTS_ENV", "allowed_roots", "extract_zip_safely", "resolve_under_roots", "save_uploaded_files",
           "spreadsheet_safe"]
