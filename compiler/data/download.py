"""Download files into a local cache, verified against a pinned SHA-256.

Only files whose checksum matches ever appear at their final path in the cache: downloads are
streamed to a temporary file in the same folder, verified, then moved into place with
os.replace (atomic on one file system), so an interrupted run cannot leave a partial file that
a later run would trust.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["DownloadError", "default_cache_dir", "fetch", "sha256_file"]

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_USER_AGENT = "nnspec-data/0.1 (+python urllib)"


class DownloadError(RuntimeError):
    """A file could not be downloaded, or what was downloaded failed its checksum."""


def default_cache_dir() -> Path:
    """Return the data cache folder: $NNSPEC_DATA, else $XDG_CACHE_HOME/nnspec, else
    ~/.cache/nnspec. The folder is not created."""
    explicit = os.environ.get("NNSPEC_DATA")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "nnspec"


def sha256_file(path: str | os.PathLike) -> str:
    """Return the lowercase hex SHA-256 of the file at `path`, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _filename_from_url(url: str) -> str:
    """Return the last path component of `url`; ValueError if there is none."""
    name = posixpath.basename(urllib.parse.urlsplit(url).path)
    if not name or name in (".", ".."):
        raise ValueError(f"cannot derive a file name from URL {url!r}; pass filename=")
    return name


def _normalize_sha256(sha256: str) -> str:
    """Return `sha256` lowercased; ValueError unless it is 64 hex digits."""
    value = sha256.strip().lower()
    if not _SHA256_RE.fullmatch(value):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return value


def _download_to(url: str, dest: Path, timeout: float) -> str:
    """Stream `url` into the file `dest` and return the SHA-256 of the bytes written.

    Raises DownloadError naming the URL on any network or HTTP failure.
    """
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as f:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                f.write(chunk)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"could not download {url}: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        # Timeouts and connection resets mid-body surface here, not as URLError.
        reason = str(exc) or type(exc).__name__
        raise DownloadError(f"could not download {url}: {reason}") from exc
    return digest.hexdigest()


def fetch(
    url: str,
    sha256: str,
    cache_dir: Path | None = None,
    filename: str | None = None,
    timeout: float = 60,
) -> Path:
    """Return the path of a verified local copy of `url`, downloading it if needed.

    The copy lives at `cache_dir / filename` (defaults: default_cache_dir() and the last
    component of the URL). A cached copy whose SHA-256 matches is returned without any network
    access; one that does not match is downloaded again. Raises DownloadError naming the URL on
    a network failure or when the downloaded bytes do not match `sha256`; in that case no new
    file is left in the cache folder.
    """
    expected = _normalize_sha256(sha256)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = folder / (filename or _filename_from_url(url))

    stale_digest = None
    if final.is_file():
        stale_digest = sha256_file(final)
        if stale_digest == expected:
            return final

    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        actual = _download_to(url, tmp, timeout)
        if actual != expected:
            message = f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}"
            if stale_digest is not None:
                message += (
                    f"; the cached copy {final} (sha256 {stale_digest}) was also wrong and was "
                    "re-downloaded"
                )
            raise DownloadError(message)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final
