"""The step thread's command queue: results, errors, and what happens once it is closed."""

import threading
from concurrent.futures import Future

import pytest

from preble_tiered.engine.step_commands import StepCommands


def test_commands_run_in_order_on_run_and_wake_the_loop():
    wake = threading.Event()
    cmds = StepCommands(wake)
    seen = []
    fut: Future = Future()
    cmds.submit(lambda: seen.append(1))
    cmds.submit(lambda: seen.append(2) or "two", fut)
    assert wake.is_set() and seen == []
    cmds.run()
    assert seen == [1, 2] and fut.result(0) == "two"
    cmds.run()  # nothing left: each command runs once
    assert seen == [1, 2]


def test_call_returns_the_result_or_raises_what_the_command_raised():
    cmds = StepCommands(threading.Event())
    stop = threading.Event()

    def step_thread():
        while not stop.is_set():
            cmds.run()

    t = threading.Thread(target=step_thread)
    t.start()
    try:
        assert cmds.call(lambda: 6 * 7, timeout=5) == 42
        with pytest.raises(ZeroDivisionError):
            cmds.call(lambda: 1 / 0, timeout=5)
    finally:
        stop.set()
        t.join()


def test_close_fails_queued_and_later_futures_without_running_them():
    cmds = StepCommands(threading.Event())
    ran = []
    queued: Future = Future()
    cmds.submit(lambda: ran.append("queued"), queued)
    cmds.close()
    with pytest.raises(RuntimeError, match="stopped"):
        queued.result(0)
    with pytest.raises(RuntimeError, match="stopped"):
        cmds.call(lambda: ran.append("late"), timeout=1)
    cmds.run()
    assert ran == []
