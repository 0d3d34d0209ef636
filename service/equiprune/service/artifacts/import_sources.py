"""Where an import may read from, and reading it: the import policy of the artifact store.

Local paths only under `import_roots` (symlinks and `..` resolved); remote protocols only
those in `import_protocols`; http(s) only through fetch.py, which vets the addresses it
connects to; other allowed protocols through fsspec. Every failure of a source is a refusal
naming `source.uri`, never INTERNAL, and no refusal quotes what the source said
(docs/security.md#imports).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from equiprune.service.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from equiprune.service.artifacts.fetch import HTTP_PROTOCOLS, LOCAL_PROTOCOLS, ImportPolicy, import_protocol, open_http

log = logging.getLogger("equiprune.service")


class ImportSources:
    """The policy for import URIs, and opening an allowed one as a stream."""

    def __init__(self, roots: Sequence[str], protocols: Sequence[str], allow_private_addresses: bool,
                 size_limit: Callable[[int, str], None]) -> None:
        self._import_roots = tuple(os.path.realpath(r) for r in roots)
        self._policy = ImportPolicy(frozenset(p.lower() for p in protocols), allow_private_addresses)
        self._size_limit = size_limit

    def check(self, uri: str) -> str:
        """The URI's protocol ('' for a plain path) if the import policy lets it be read at all;
        cheap (no network), so a request is refused before anything else is looked up."""
        protocol = import_protocol(uri)
        if protocol in LOCAL_PROTOCOLS or not protocol:
            self._resolve_source(uri, protocol)  # the import-roots check
        elif protocol not in HTTP_PROTOCOLS and protocol not in fsspec.available_protocols():
            raise InvalidArgument(f"{uri!r} uses an unknown protocol {protocol!r}", field="source.uri")
        else:
            self._policy.check_allowed(protocol, uri)
        return protocol

    @contextmanager
    def open(self, uri: str, protocol: str) -> Iterator[tuple[BinaryIO, int | None]]:
        """The source as a stream, and its size if known beforehand (checked against the limit
        before a byte is read)."""
        if protocol in HTTP_PROTOCOLS:
            with open_http(uri, self._policy) as body:
                if body.size is not None:
                    self._size_limit(body.size, "source.uri")
                yield body, body.size
            return
        source_fs, source_path = self._resolve_source(uri, protocol)
        size = self._source_size(source_fs, source_path, uri)
        with _source_errors(uri, "open"):
            stream = source_fs.open(source_path, "rb")
        with stream:
            yield _RefusingReadErrors(stream, uri), size

    def _resolve_source(self, uri: str, protocol: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The fsspec filesystem and path of an allowed, non-http import URI."""
        with _source_errors(uri, "reach"):
            try:
                source_fs, path = fsspec.core.url_to_fs(uri)
            except ImportError as exc:
                raise FailedPrecondition(
                    f"the server cannot read {protocol}:// URLs (a package is missing: {exc})", field="source.uri"
                ) from None
            except (ValueError, TypeError) as exc:
                raise InvalidArgument(f"{uri!r} is not a readable URI: {exc}", field="source.uri") from None
        if isinstance(source_fs, LocalFileSystem):
            path = self._allowed_local_path(path, uri)
        elif protocol in LOCAL_PROTOCOLS or not protocol:
            raise InvalidArgument(f"{uri!r} is not a local path", field="source.uri")
        return source_fs, path

    def _allowed_local_path(self, path: str, uri: str) -> str:
        """The real path (symlinks and `..` resolved) if it lies under an import root."""
        real = os.path.realpath(path)
        for root in self._import_roots:
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                return real
        if not self._import_roots:
            reason = "imports of local paths are disabled (the server setting `import_roots` is empty)"
        else:
            reason = "the path is not under any directory of the server setting `import_roots`"
        # Named as the client wrote it: the resolved path would reveal the server's folders.
        raise FailedPrecondition(f"the server does not allow imports from {uri}: {reason}", field="source.uri")

    def _source_size(self, source_fs: fsspec.AbstractFileSystem, path: str, uri: str) -> int:
        with _source_errors(uri, "look up"):
            info = source_fs.info(path)
        if info.get("type") != "file":
            raise InvalidArgument(f"{uri} is not a file", field="source.uri")
        size = int(info.get("size") or 0)
        if size < 1:
            raise InvalidArgument(f"{uri} is empty", field="source.uri")
        self._size_limit(size, "source.uri")
        return size


@contextmanager
def _source_errors(uri: str, action: str) -> Iterator[None]:
    """Failures of an import source as refusals naming source.uri, never INTERNAL. The
    exception's own text stays in the server log: it may quote what the source said."""
    try:
        yield
    except FileNotFoundError:
        raise NotFound(f"nothing found at {uri}", field="source.uri") from None
    except IsADirectoryError:
        raise InvalidArgument(f"{uri} is not a file", field="source.uri") from None
    except PermissionError:
        raise FailedPrecondition(f"the server is not permitted to read {uri}", field="source.uri") from None
    except OSError:
        log.warning("import source %s: could not %s it", uri, action, exc_info=True)
        raise Unavailable(f"could not {action} {uri} (the server log has the details)", field="source.uri") from None


class _RefusingReadErrors:
    """A source stream whose read failures are refusals (a broken connection mid-copy)."""

    def __init__(self, stream: BinaryIO, uri: str) -> None:
        self._stream, self._uri = stream, uri

    def read(self, size: int) -> bytes:
        with _source_errors(self._uri, "read"):
            return self._stream.read(size)
