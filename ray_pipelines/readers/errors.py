"""Errors a reader raises for a file it cannot read, naming the file.

pyarrow's errors for a damaged Parquet file ("Couldn't deserialize thrift",
"Invalid column metadata") and NumPy's or json's for a damaged ``.npy`` or
``.json`` do not say which file; in a training run over thousands of files the
name is what the user needs to find, delete or rewrite it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..storage import split_protocol


class UnreadableFile(OSError):
    """A file of an output that could not be read (damaged, or changed since the reader was made); the
    message names it and gives the underlying reason."""


class GoneFile(UnreadableFile, FileNotFoundError):
    """A file of the reader's that is not there (still a ``FileNotFoundError``), with the likely why."""


# Readers hold the files of the commit they were made from; a training run that outlives a nightly
# commit met the OS's bare "No such file or directory" for each file that commit replaced.
GONE = (
    "the file is gone: a newer run of the job that wrote it may have committed the output again since the "
    "reader was made (a commit deletes the files it rewrote or pruned): make the reader again"
)


@contextmanager
def naming_the_file(
    url: str, errors: tuple[type[BaseException], ...], changed: Callable[[], str | None] | None = None
) -> Iterator[None]:
    """Re-raise ``errors`` raised inside as :class:`UnreadableFile` naming ``url``; ``changed()`` may add
    why (the file is not as the reader found it). Errors that name the file already (a file that is not
    Parquet) pass unchanged; a missing file is a :class:`GoneFile`, which says why it may be gone."""
    try:
        yield
    except errors as error:
        if isinstance(error, FileNotFoundError) and not isinstance(error, UnreadableFile):
            raise GoneFile(f"reading {url}: {GONE}") from error
        message = str(error)
        if isinstance(error, UnreadableFile) or url in message or split_protocol(url)[1] in message:
            raise
        why = changed() if changed is not None else None
        raise UnreadableFile(f"reading {url}: {message}".rstrip() + (f" ({why})" if why else "")) from error


@contextmanager
def store_refusals_named(url: str) -> Iterator[None]:
    """A store's refusal of the reader's first request named with the output and the likely why: s3fs says
    only "Forbidden" for a wrong secret or key id, or a bucket policy that leaves the reader out."""
    where = "the environment's AWS_* variables" if split_protocol(url)[0] in ("s3", "s3a") else "the environment"
    try:
        yield
    except PermissionError as error:
        raise PermissionError(
            f"{url}: the store refused access ({error}): check the credentials (storage_options, or {where}) "
            "and the bucket's policy"
        ) from error
