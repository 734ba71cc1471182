"""Errors caused by the user's input or configuration (not by a bug in arena-pref).

Scripts catch :class:`InputError` and print its message alone, without a traceback.
"""


class InputError(Exception):
    """A problem in the user's data or configuration, explained in the message."""


def describe(path, row_id=None, column=None):
    """Prefix naming where a problem sits: ``file 'x.csv', row id 12, column 'prompt'``."""
    parts = [f"file '{path}'"]
    if row_id is not None:
        parts.append(f"row id {row_id}")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)
