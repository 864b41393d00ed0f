"""The one exception type that reaches the user as a single line (no traceback)."""


class BloodmlError(Exception):
    """A problem with the user's input or environment, phrased as 'what is wrong: how to fix it'.

    The CLI prints ``str(error)`` on one line and exits non-zero; library callers can catch it.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
