"""The two kinds of error minigrok reports to a user.

The command line turns both into one line on stderr and exit code 2; nothing else
is caught, so a genuine bug still shows its traceback.
"""


class MinigrokError(Exception):
    """Bad input from the user: an argument, a file, a setting."""


class CheckpointError(MinigrokError):
    """A checkpoint file that is missing, malformed, unsafe or the wrong shape.

    The message starts with the file name (``tensor00007_000: ...``).
    """
