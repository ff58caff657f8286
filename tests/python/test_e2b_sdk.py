"""The official E2B Python SDK against the emulator: what a user's own E2B
code does must work offline, unchanged."""

import time
import uuid

import pytest
from e2b import CommandExitException, Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import NotFoundException


@pytest.fixture
def sandbox(emulator):
    sbx = Sandbox.create(timeout=120)
    yield sbx
    sbx.kill()


def test_create_with_envs_and_metadata_then_get_info(emulator):
    metadata = {"suite": "conformance", "case": str(uuid.uuid4())}
    sbx = Sandbox.create(envs={"GREETING": "hello from envs"}, metadata=metadata, timeout=120)
    try:
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.metadata == metadata
        assert info.state.value == "running"
        assert info.end_at > info.started_at
        # Create-time envs are the default environment of every command.
        assert sbx.commands.run("echo $GREETING").stdout == "hello from envs\n"
        assert sbx.commands.run("echo $GREETING", envs={"GREETING": "override"}).stdout == "override\n"
    finally:
        sbx.kill()


def test_files_write_text_and_bytes_then_read(sandbox):
    sandbox.files.write("/home/user/notes/hello.txt", "hello, sandbox\n")
    payload = bytes(range(256)) * 64
    sandbox.files.write("/home/user/data/blob.bin", payload)

    assert sandbox.files.read("/home/user/notes/hello.txt") == "hello, sandbox\n"
    assert bytes(sandbox.files.read("/home/user/data/blob.bin", format="bytes")) == payload
    # Written files are visible to processes in the sandbox.
    out = sandbox.commands.run("cat /home/user/notes/hello.txt && wc -c < /home/user/data/blob.bin")
    assert out.stdout == f"hello, sandbox\n{len(payload)}\n"

    with pytest.raises(NotFoundException):
        sandbox.files.read("/home/user/missing.txt")


def test_files_write_many_in_one_call(sandbox):
    sandbox.files.write_files(
        [
            {"path": "/home/user/many/a.txt", "data": "A"},
            {"path": "/tmp/many/b.txt", "data": b"B"},
        ]
    )
    assert sandbox.commands.run("cat /home/user/many/a.txt /tmp/many/b.txt").stdout == "AB"


def test_commands_run_stdout_stderr_and_exit_codes(sandbox):
    result = sandbox.commands.run("echo out; echo err >&2")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 0)

    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run("echo partial; echo broken >&2; exit 3")
    assert failed.value.exit_code == 3
    assert failed.value.stdout == "partial\n"
    assert failed.value.stderr == "broken\n"


def test_kill_a_running_process(sandbox):
    handle = sandbox.commands.run("sleep 600", background=True)
    assert handle.pid > 0
    assert handle.pid in [p.pid for p in sandbox.commands.list()]
    assert handle.kill() is True
    with pytest.raises(CommandExitException) as killed:
        handle.wait()
    assert killed.value.exit_code != 0
    assert handle.pid not in [p.pid for p in sandbox.commands.list()]
    # Killing it again finds nothing to kill.
    assert sandbox.commands.kill(handle.pid) is False


def test_set_timeout_extends_and_enforces_the_lifetime(emulator):
    sbx = Sandbox.create(timeout=120)
    try:
        before = sbx.get_info().end_at
        sbx.set_timeout(600)
        assert sbx.get_info().end_at > before

        sbx.set_timeout(1)
        deadline = time.monotonic() + 30
        while sbx.is_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not sbx.is_running(), "the sandbox outlived its timeout"
        assert Sandbox.kill(sbx.sandbox_id) is False
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_list_filters_by_metadata(emulator):
    run = str(uuid.uuid4())
    mine = [Sandbox.create(metadata={"run": run, "n": str(i)}, timeout=120) for i in range(2)]
    other = Sandbox.create(metadata={"run": "someone-else"}, timeout=120)
    try:
        listed = Sandbox.list(query=SandboxQuery(metadata={"run": run})).next_items()
        assert sorted(s.sandbox_id for s in listed) == sorted(s.sandbox_id for s in mine)
        assert all(s.metadata["run"] == run for s in listed)

        one = Sandbox.list(query=SandboxQuery(metadata={"run": run, "n": "1"})).next_items()
        assert [s.sandbox_id for s in one] == [mine[1].sandbox_id]
    finally:
        for sbx in [*mine, other]:
            sbx.kill()


def test_kill_sandbox_reports_whether_it_existed(emulator):
    sbx = Sandbox.create(timeout=120)
    assert sbx.is_running()
    assert sbx.kill() is True
    assert not sbx.is_running()
    assert Sandbox.kill(sbx.sandbox_id) is False
    assert Sandbox.kill("nosuchsandbox0000000") is False


def test_create_refuses_a_timeout_above_the_plan_limit(emulator):
    # E2B's Hobby plan: one hour, and E2B's own words for anything longer.
    with pytest.raises(Exception, match="Timeout cannot be greater than 1 hours"):
        Sandbox.create(timeout=7200)


def test_create_refuses_an_unknown_template(emulator):
    with pytest.raises(Exception, match="template 'no-such-template' not found"):
        Sandbox.create(template="no-such-template", timeout=120)


def test_a_missing_cwd_is_refused_as_envd_does(sandbox):
    with pytest.raises(Exception, match="cwd '/home/user/nowhere' does not exist"):
        sandbox.commands.run("pwd", cwd="/home/user/nowhere")


def test_commands_get_envd_s_user_environment(sandbox):
    assert sandbox.commands.run("echo $HOME $USER $LOGNAME").stdout == "/home/user user user\n"


TICKER = "while true; do date +%s%N >> /tmp/ticks; sleep 0.1; done"


def _gaps(ticks_text):
    stamps = [int(line) for line in ticks_text.split()]
    return [(b - a) / 1e9 for a, b in zip(stamps, stamps[1:])]


def test_pause_stops_every_process_and_connect_resumes_them(emulator):
    run = str(uuid.uuid4())
    sbx = Sandbox.create(metadata={"run": run}, timeout=120)
    try:
        sbx.commands.run(TICKER, background=True)
        time.sleep(0.5)
        assert sbx.pause() is True
        assert sbx.pause() is False, "a second pause is E2B's 409, which the SDK reports as False"
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
        paused = Sandbox.list(
            query=SandboxQuery(metadata={"run": run}, state=[SandboxState.PAUSED])
        ).next_items()
        assert [s.sandbox_id for s in paused] == [sbx.sandbox_id]
        running = Sandbox.list(
            query=SandboxQuery(metadata={"run": run}, state=[SandboxState.RUNNING])
        ).next_items()
        assert running == []
        # E2B's proxy does not find a paused sandbox: envd calls fail.
        with pytest.raises(Exception):
            sbx.files.read("/tmp/ticks", request_timeout=5)
        time.sleep(2)

        resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
        time.sleep(0.5)
        gaps = _gaps(resumed.files.read("/tmp/ticks"))
        # The ticker stood still for the whole pause, then went on.
        assert max(gaps) >= 2, f"no pause in the ticks: longest gap {max(gaps):.2f} s"
        assert gaps[-1] < 1, "the ticker did not tick again after resume"
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_a_sandbox_made_to_pause_on_timeout_is_paused_not_killed(emulator):
    sbx = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause"})
    try:
        sbx.files.write("/home/user/kept.txt", "still here\n")
        started = time.time()
        deadline = started + 15
        while Sandbox.get_info(sbx.sandbox_id).state != SandboxState.PAUSED:
            assert time.time() < deadline, "not paused at its timeout"
            time.sleep(0.2)
        # Paused, not killed: it is listed, its endAt is when it paused.
        paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
        listed = [s for s in paused if s.sandbox_id == sbx.sandbox_id]
        assert len(listed) == 1
        assert listed[0].end_at.timestamp() >= started + 1.5
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
        assert resumed.files.read("/home/user/kept.txt") == "still here\n"
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_a_filesystem_pause_keeps_files_but_not_processes(emulator):
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.files.write("/home/user/kept.txt", "still here\n")
        handle = sbx.commands.run("sleep 600", background=True)
        assert sbx.pause(mode="filesystem") is True
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
        # Resuming a memory-less pause reboots the sandbox: the disk is
        # kept, the processes are not.
        assert resumed.files.read("/home/user/kept.txt") == "still here\n"
        assert handle.pid not in [p.pid for p in resumed.commands.list()]
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_commands_connect_reattaches_to_a_command_that_outlived_its_client(sandbox):
    # Issue 14: a run outlives the request that started it. The first client
    # lets go of the command; another connection to the sandbox reattaches by
    # pid (envd's Process/Connect) and waits for the result.
    script = "echo first; sleep 1; for i in 1 2 3; do echo later$i; sleep 0.1; done"
    handle = sandbox.commands.run(script, background=True)
    pid = handle.pid
    # Read up to the first line, then let go.
    for stdout, _, _ in handle:
        if stdout and "first" in stdout:
            break
    handle.disconnect()

    again = Sandbox.connect(sandbox.sandbox_id)
    reattached = again.commands.connect(pid)
    assert reattached.pid == pid
    result = reattached.wait()
    assert result.exit_code == 0
    # Output from the moment of reattaching on: envd replays nothing.
    assert result.stdout.endswith("later1\nlater2\nlater3\n"), result.stdout
    assert "first" not in result.stdout


def test_commands_connect_reports_a_failing_exit_and_an_unknown_pid(sandbox):
    handle = sandbox.commands.run("sleep 1; echo bye >&2; exit 5", background=True)
    reattached = sandbox.commands.connect(handle.pid)
    handle.disconnect()
    with pytest.raises(CommandExitException) as failed:
        reattached.wait()
    assert failed.value.exit_code == 5
    assert failed.value.stderr == "bye\n"

    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999_999)
