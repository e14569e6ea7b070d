"""Where a vLLM backend reads the entropies its forcing processor records: a channel found once stays in use
when a call's keys come back empty (a call cut short by a deadline or a cancel left no records), and the records
of a failed call are dropped rather than left in the worker."""

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from refine.backends.vllm.backend import VLLMBackend  # noqa: E402


class Transport:
    in_process = False

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def collective_rpc(self, method, args=()):
        self.calls.append((method, list(args[0])))
        return [self.answers.pop(0)]


def backend(transport, via=None):
    b = VLLMBackend.__new__(VLLMBackend)  # no engine: only the entropy bookkeeping is under test
    b.transport, b._entropy_mode, b._entropy_via = transport, "auto", via
    return b


def test_an_empty_answer_keeps_a_channel_that_worked():
    t = Transport([{"a": [[0, 1.5]]}, {}, {"c": [[2, 0.5]]}])
    b = backend(t)
    assert b.collect_entropies(["a"]) == {"a": {0: 1.5}} and b._entropy_via == "rpc"
    assert b.collect_entropies(["b"]) is None and b._entropy_via == "rpc" and b.wants_entropy_records
    assert b.collect_entropies(["c"]) == {"c": {2: 0.5}}


def test_no_channel_at_all_turns_the_records_off():
    class Refusing(Transport):
        def collective_rpc(self, method, args=()):
            raise RuntimeError("no such method")

    b = backend(Refusing([]))
    assert b.collect_entropies(["a"]) is None and b._entropy_via == "none" and not b.wants_entropy_records


def test_a_failed_calls_records_are_dropped_once_the_channel_is_known():
    t = Transport([{"x": [[0, 1.0]]}])
    backend(t, via="rpc").discard_entropies(["x", None])
    assert t.calls == [("refine_take_entropies", ["x"])]
    unknown = Transport([])
    backend(unknown).discard_entropies(["x"])  # no channel known yet: nothing is probed on a failure path
    assert unknown.calls == []
    around = Transport([{}])
    with pytest.raises(KeyboardInterrupt):  # what a cancel looks like to the calling thread, or any failure
        with backend(around, via="rpc").recording(["y"]):
            raise KeyboardInterrupt
    assert around.calls == [("refine_take_entropies", ["y"])]
