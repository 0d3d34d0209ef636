"""List paging shared by the job and artifact stores: the page size check and opaque page
tokens, each bound to the filters of the list it was issued for."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from equiprune.service.errors import InvalidArgument

MAX_PAGE_SIZE = 1000


def check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE}, not {page_size}", field="page_size")


def filter_digest(*filters: object) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def encode_page_token(create_time: float, item_id: str, filters: str) -> str:
    """An opaque token for the page after the item (create_time, item_id), bound to `filters`."""
    payload = json.dumps({"t": create_time, "id": item_id, "f": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode()


def decode_page_token(token: str, filters: str) -> tuple[float, str]:
    """The (create_time, id) a token continues after; InvalidArgument when malformed or reused with other filters."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        after_time, after_id, token_filters = payload["t"], payload["id"], payload["f"]
        valid = isinstance(after_time, (int, float)) and isinstance(after_id, str) and isinstance(token_filters, str)
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeError):
        valid = False
    if not valid:
        raise InvalidArgument("page_token is not a token this server issued", field="page_token")
    if token_filters != filters:
        raise InvalidArgument(
            "page_token was issued for a list with other filters; repeat the same filters or start from an empty token",
            field="page_token",
        )
    return float(after_time), after_id
