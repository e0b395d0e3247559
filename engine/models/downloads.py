"""Fetch a missing file from its URL: resumable, verified, one process at a time.

The bytes go to ``<name>.part`` beside the target. A cut connection is resumed with an HTTP
``Range`` request (a few times within one call, and again by the next call: the ``.part`` file
stays); a server that ignores ranges makes it start over. When the preset gives the file's
SHA-256 the finished file is checked against it; a mismatch removes it and fails naming the file
and the URL. Only then is the ``.part`` renamed into place, so a half-written file never sits
under the final name. ``<name>.lock`` (an OS file lock, through ``filelock``) lets one process
download a file while every other process asking for it waits, says so, and then finds it; the
lock file is removed once the file is in place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import requests
from filelock import FileLock, Timeout

CHUNK = 1 << 18
CONNECT_TIMEOUT_S = 20
READ_TIMEOUT_S = 60
ATTEMPTS = 5
"""Tries in a row that add no bytes before a call gives up (the ``.part`` is kept)."""
RETRY_BACKOFF_S = 0.5
WAIT_REPORT_S = 15.0
ALLOWED_SCHEMES = ("http://", "https://", "file://")
HUB = "https://huggingface.co/"

log = logging.getLogger("engine.models.downloads")

MessageCallback = Callable[[str], None]
ProgressCallback = Callable[[int, int | None], None]
"""``(bytes done, total bytes or None)``, called for every chunk written (and once at the start)."""


class DownloadError(OSError):
    """A download failed or was cut short; nothing was left under the target's name."""


class DownloadVerificationError(DownloadError):
    """The file arrived but is not the file the preset names (its SHA-256 or size differ)."""


def part_path(target: Path) -> Path:
    """Where the bytes of ``target`` collect while it downloads."""
    return target.with_name(target.name + ".part")


def lock_path(target: Path) -> Path:
    """The lock file that one process holds while it downloads ``target``."""
    return target.with_name(target.name + ".lock")


def mirrored(url: str) -> str:
    """``url`` with the Hugging Face host replaced by ``HF_ENDPOINT`` when that is set (a mirror,
    like Fooocus's ``--hf-mirror``)."""
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/")
    if endpoint and url.startswith(HUB):
        return f"{endpoint}/{url[len(HUB) :]}"
    return url


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    target: Path,
    on_message: MessageCallback | None = None,
    *,
    sha256: str | None = None,
    on_progress: ProgressCallback | None = None,
    attempts: int = ATTEMPTS,
    wait_timeout: float | None = None,
) -> Path:
    """Download ``url`` to ``target`` unless it is there already; return ``target``.

    Progress goes to ``on_message`` every 5 % (``"Downloading x.safetensors: 35% (12.0/34.3 MB)"``,
    every 100 MB when the size is unknown) and to the ``engine.models.downloads`` log; ``on_progress``
    gets every chunk (for a progress bar). ``sha256`` (hex) is checked when given; without it the
    file is only checked against the size the server announced. While another process downloads
    the same file this call waits (reporting that it does), up to ``wait_timeout`` seconds
    (None: as long as it takes), and returns the file that process wrote.
    """
    if not url.startswith(ALLOWED_SCHEMES):
        raise DownloadError(f"refusing to download {target.name} from {url!r}: not http(s) or file")
    url = mirrored(url)
    expected = sha256.strip().lower() if sha256 else None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DownloadError(f"the SHA-256 given for {target.name} is not 64 hex digits: {sha256!r}")

    def report(message: str) -> None:
        log.info("%s", message)
        if on_message is not None:
            on_message(message)

    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(target))
    _acquire(lock, target, report, wait_timeout)
    try:
        if target.exists():
            report(f"{target.name} was downloaded by another process.")
            return target
        _fetch(url, target, expected, report, on_progress, attempts)
    finally:
        if target.exists():
            # Safe to remove now: whoever takes a lock on it from here on finds the file there and
            # writes nothing. After a failure it stays (the next try takes it over).
            lock_path(target).unlink(missing_ok=True)
        lock.release()
    return target


def _acquire(
    lock: FileLock, target: Path, report: MessageCallback, wait_timeout: float | None
) -> None:
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        pass
    report(f"Waiting: another process is downloading {target.name} ...")
    started = time.monotonic()
    while True:
        step = WAIT_REPORT_S
        if wait_timeout is not None:
            step = min(step, max(0.0, wait_timeout - (time.monotonic() - started)))
        try:
            lock.acquire(timeout=step)
            return
        except Timeout:
            waited = time.monotonic() - started
            if wait_timeout is not None and waited >= wait_timeout:
                raise DownloadError(
                    f"gave up after {waited:.0f} s waiting for another process to download "
                    f"{target.name} (lock {lock_path(target)})"
                ) from None
            part = part_path(target)
            done = part.stat().st_size if part.exists() else 0
            report(
                f"Waiting: another process is downloading {target.name} "
                f"({done / 1e6:.1f} MB so far, {waited:.0f} s) ..."
            )


class _Partial:
    """The ``.part`` file and the running hash and length of the bytes it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.done = 0
        if path.exists():  # bytes from an earlier, interrupted call count too
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    self.hasher.update(chunk)
                    self.done += len(chunk)

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.hasher = hashlib.sha256()
        self.done = 0

    def append(self, chunks: Iterator[bytes], total: int | None, progress: _Progress) -> None:
        with self.path.open("ab") as out:
            for chunk in chunks:
                if chunk:
                    out.write(chunk)
                    self.hasher.update(chunk)
                    self.done += len(chunk)
                    progress.update(self.done, total)
        if total is not None and self.done < total:
            raise ConnectionError(f"the connection closed at {self.done} of {total} bytes")


class _Unreachable(ConnectionError):
    """No response at all: the connection could not be made."""


class _Restart(Exception):
    """The server sent the whole file instead of the range asked for: start the .part over."""


def _fetch(
    url: str,
    target: Path,
    expected: str | None,
    report: MessageCallback,
    on_progress: ProgressCallback | None,
    attempts: int,
) -> None:
    """Fill ``<target>.part`` from ``url`` (resuming), verify it, rename it to ``target``."""
    partial = _Partial(part_path(target))
    progress = _Progress(target.name, report, on_progress)
    report(
        f"Resuming {target.name} from {url} at {partial.done / 1e6:.1f} MB ..."
        if partial.done
        else f"Downloading {target.name} from {url} ..."
    )
    failures = 0
    best = partial.done  # a try only counts as progress when it gets further than any before
    while True:
        try:
            total = _transfer(url, partial, progress)
            break
        except _Restart:
            partial.restart()
            continue
        except DownloadError:
            raise
        except (OSError, requests.RequestException) as exc:
            error: Exception = exc
        if partial.done > best:
            best, failures = partial.done, 0
        else:
            failures += 1
        # A host that cannot be reached at all (no network, a wrong name) gets one more try only.
        unreachable = isinstance(error, _Unreachable) and failures >= min(2, attempts)
        if failures >= attempts or unreachable:
            kept = (
                f" ({partial.done / 1e6:.1f} MB kept in {partial.path.name}; the next try resumes)"
                if partial.done
                else ""
            )
            raise DownloadError(
                f"could not download {target.name} from {url}: {error}{kept}"
            ) from (error)
        if isinstance(error, _Unreachable):
            report(f"Could not connect to download {target.name} ({error}); trying again ...")
        else:
            report(
                f"Connection lost while downloading {target.name} at {partial.done / 1e6:.1f} MB "
                f"({error}); trying again ..."
            )
        time.sleep(min(RETRY_BACKOFF_S * 2 ** (failures - 1), 10.0) if failures else 0.0)

    if total is not None and partial.done != total:
        partial.restart()
        raise DownloadVerificationError(
            f"{target.name} from {url} has {partial.done} bytes where the server announced "
            f"{total}; the file was removed"
        )
    actual = partial.hasher.hexdigest()
    if expected is not None and actual != expected:
        partial.restart()
        raise DownloadVerificationError(
            f"{target.name} from {url} failed verification: its SHA-256 is {actual}, the preset "
            f"expects {expected}; the file was removed"
        )
    os.replace(partial.path, target)
    checked = "SHA-256 verified" if expected else "not verified: the preset gives no SHA-256"
    report(f"Downloaded {target.name} ({partial.done / 1e6:.1f} MB, {checked}).")


def _transfer(url: str, partial: _Partial, progress: _Progress) -> int | None:
    """One request: append the bytes from ``partial.done`` on; return the file's total size."""
    name = partial.path.name.removesuffix(".part")
    if url.startswith("file://"):
        source = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        try:
            size = source.stat().st_size
            with source.open("rb") as handle:
                handle.seek(partial.done)
                progress.start(partial.done, size)
                partial.append(iter(lambda: handle.read(CHUNK), b""), size, progress)
        except FileNotFoundError as exc:
            raise DownloadError(f"could not download {name} from {url}: {exc}") from exc
        return size
    # Identity encoding: a compressed body would make lengths and ranges count other bytes.
    headers = {"Accept-Encoding": "identity"}
    if partial.done:
        headers["Range"] = f"bytes={partial.done}-"
    try:
        response = requests.get(
            url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        )
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Unreachable(str(exc)) from exc
    with response:
        content_range = response.headers.get("Content-Range")
        if response.status_code == 416 and partial.done:
            if _range_total(content_range) == partial.done:
                return partial.done  # the .part already holds the whole file
            raise _Restart
        if response.status_code >= 500 or response.status_code == 429:
            raise ConnectionError(f"HTTP {response.status_code} {response.reason}")  # retried
        if response.status_code >= 400:
            raise DownloadError(
                f"could not download {name} from {url}: HTTP {response.status_code} "
                f"{response.reason}"
            )
        if partial.done and (
            response.status_code != 206 or _range_start(content_range) != partial.done
        ):
            raise _Restart  # the server ignored the range: all bytes again
        if response.status_code == 206:
            total = _range_total(content_range)
        else:
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
        progress.start(partial.done, total)
        partial.append(response.iter_content(CHUNK), total, progress)
        return total


def _range_total(content_range: str | None) -> int | None:
    """``bytes 100-199/1000`` or ``bytes */1000`` → 1000."""
    match = re.search(r"/(\d+)\s*$", content_range or "")
    return int(match.group(1)) if match else None


def _range_start(content_range: str | None) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", content_range or "")
    return int(match.group(1)) if match else None


class _Progress:
    """Progress lines every 5 % (every 100 MB when the size is unknown) and the chunk callback."""

    def __init__(self, name: str, report: MessageCallback, each: ProgressCallback | None) -> None:
        self.name = name
        self.report = report
        self.each = each
        self.next_mark = 0.0

    @staticmethod
    def _mark(done: int, total: int | None) -> tuple[float, int]:
        return (done * 100 / total, 5) if total else (done / 1e6, 100)

    def start(self, done: int, total: int | None) -> None:
        mark, step = self._mark(done, total)
        self.next_mark = (mark // step + 1) * step
        if self.each is not None:
            self.each(done, total)

    def update(self, done: int, total: int | None) -> None:
        if self.each is not None:
            self.each(done, total)
        mark, step = self._mark(done, total)
        if mark >= self.next_mark:
            self.report(progress_line(self.name, done, total))
            self.next_mark = (mark // step + 1) * step


def progress_line(name: str, done: int, total: int | None) -> str:
    """``Downloading x: 35% (12.0/34.3 MB)`` (or only the MB when the total is unknown)."""
    if total:
        return f"Downloading {name}: {done * 100 // total}% ({done / 1e6:.1f}/{total / 1e6:.1f} MB)"
    return f"Downloading {name}: {done / 1e6:.1f} MB"


def copy_file_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a ``.part`` sibling renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target)
    shutil.copyfile(source, part)
    os.replace(part, target)
