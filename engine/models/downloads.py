"""Fetch a missing model file from its URL, atomically, reporting progress."""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 18
TIMEOUT_S = 60
ALLOWED_SCHEMES = ("http://", "https://", "file://")


class DownloadError(OSError):
    """A download failed or was cut short; nothing was left at the target path."""


def download_file(url: str, target: Path, on_message: Callable[[str], None] | None = None) -> Path:
    """Download ``url`` to ``target`` through a temporary sibling file renamed into place.

    A half-finished download never sits under the final name, so a crash or a cut connection is
    retried from scratch next time. Progress goes to ``on_message`` every 5 %
    (``"Downloading x.safetensors: 35% (12.0/34.3 MB)"``), or every 100 MB when the size is unknown.
    """
    if not url.startswith(ALLOWED_SCHEMES):
        raise DownloadError(f"refusing to download {target.name} from {url!r}: not http(s) or file")
    report = on_message or (lambda _message: None)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (scheme checked above)
            total = int(response.headers.get("Content-Length") or 0)
            done, next_report = 0, 0.0
            report(f"Downloading {target.name} from {url} ...")
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                progress = done / total * 100 if total else done / 1e6
                if progress >= next_report:
                    report(_progress_line(target.name, done, total))
                    next_report = (progress // 5 + 1) * 5 if total else (progress // 100 + 1) * 100
            if total and done != total:
                raise DownloadError(f"download of {target.name} stopped at {done} of {total} bytes")
        os.replace(tmp, target)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, DownloadError):
            raise
        raise DownloadError(f"could not download {target.name} from {url}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report(f"Downloaded {target.name}.")
    return target


def _progress_line(name: str, done: int, total: int) -> str:
    if total:
        return f"Downloading {name}: {done * 100 // total}% ({done / 1e6:.1f}/{total / 1e6:.1f} MB)"
    return f"Downloading {name}: {done / 1e6:.1f} MB"
