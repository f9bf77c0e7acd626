"""The one error type segxai raises for bad input, so callers can catch it and users read a clear message."""


class SegxaiError(ValueError):
    """Bad input or configuration: wrong shapes, NaNs, empty regions, unknown names, unreadable files."""
