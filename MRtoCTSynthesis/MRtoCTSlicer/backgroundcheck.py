"""A check that reads files (the training data check reads every volume) run in a thread, so the click that asked
for it returns at once; the panel's timer asks ``done``."""
import threading


class BackgroundCheck:
    """``function()`` in a daemon thread (the data check reads every volume): ``done``, then ``result`` or
    ``error`` (its message). Polled by the panel's timer, so the click returns at once. ``context``: attributes the
    caller wants back with the result."""

    def __init__(self, function, **context):
        self.__dict__.update(context)
        self.result, self.error = None, None
        self._thread = threading.Thread(target=self._run, args=(function,), daemon=True)
        self._thread.start()

    def _run(self, function):
        try:
            self.result = function()
        except Exception as error:  # reported by the panel
            self.error = str(error) or type(error).__name__

    @property
    def done(self):
        return not self._thread.is_alive()
