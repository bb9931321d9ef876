"""The leak check fails a test that leaves asyncio tasks pending on its loop."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import leftover_tasks


def test_a_pending_task_is_found_and_a_finished_one_is_not() -> None:
    loop = asyncio.new_event_loop()
    try:
        waiting = loop.create_task(asyncio.Event().wait(), name="waits-forever")
        quick = loop.create_task(asyncio.sleep(0.01))
        assert leftover_tasks(loop, grace_s=0.2) == [waiting]
        assert quick.done()
        waiting.cancel()
        assert leftover_tasks(loop, grace_s=0.2) == []
    finally:
        loop.close()


INNER_TESTS = '''
import asyncio

background = []

async def test_leaves_a_task():
    background.append(asyncio.create_task(asyncio.Event().wait(), name="forgotten-poller"))

async def test_cancels_without_awaiting():
    task = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    task.cancel()  # still pending at the test's end; done a moment later

async def test_awaits_its_task():
    await asyncio.create_task(asyncio.sleep(0))

def test_sync():
    pass
'''


def test_an_async_test_leaving_a_task_fails(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n"
                     "asyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(
        "import tests.conftest\n"
        "from tests.conftest import pytest_fixture_setup  # noqa: F401\n"
        "tests.conftest.TASK_GRACE_S = 0.1  # the leak is certain here; no need to wait 1 s\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    # hypothesis's plugin imports all of hypothesis at the session end: seconds, for nothing here
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaves_a_task*"])
    assert ("test_leaves_a_task left asyncio tasks pending: ['forgotten-poller (Event.wait)']"
            in result.stdout.str())
