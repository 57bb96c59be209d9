"""The one exception type whose message is shown to the user as is, without a traceback."""


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and how to fix it."""
