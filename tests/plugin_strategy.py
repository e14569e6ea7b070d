"""A strategy plug-in named by import path (not registered), for the plug-in and server tests."""

from refine import Strategy


class FirstPosition(Strategy):
    """Tries the configured moves at position 0 of the current output, once."""

    def step(self, search):
        results = search.evaluate(search.propose(search.current, [0]))
        if results:
            search.accept(*max(results, key=lambda r: r[1].value))
        return False


class NotAllowed(FirstPosition):
    """Importable, but no server test allows it."""
