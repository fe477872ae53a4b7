class AllStageError(Exception):
    """A problem with the user's input or set-up. The CLI prints its message on one line and exits 2."""
