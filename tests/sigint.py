"""A real Ctrl-C at a chosen point of a fit, for the tests of interrupted training."""
import signal


class SigintAfter:
    """Wraps a fit's training steps: after `calls` runs, a real SIGINT arrives just as the
    native call returns (where a Ctrl-C pressed during the run is delivered). deferred: the
    fit had put its own handler in place of Python's (a KeyboardInterrupt raised inside the
    steps' run would lose the count of the steps it made)."""

    def __init__(self, steps, calls):
        self.steps, self.calls, self.done = steps, calls, 0
        self.deferred = True

    def run(self, *args, **kwargs):
        self.deferred &= signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        done, failure = self.steps.run(*args, **kwargs)
        self.done += done
        self.calls -= 1
        if self.calls == 0:
            signal.raise_signal(signal.SIGINT)
        return done, failure

    def __getattr__(self, name):        # the rest of the steps' interface
        return getattr(self.steps, name)
