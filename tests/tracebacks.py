"""A real traceback's text, for the incident-log tests (client and service side)."""

import traceback


def traceback_text(message: str) -> str:
    """The formatted traceback of a RuntimeError(message) raised here."""
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        return "".join(traceback.format_exception(exc))
