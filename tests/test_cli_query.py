"""CLI commands over the query socket: a real server on a Unix socket, the FakeNode behind it,
and ``pithnode.node.cli.main`` run in a worker thread (it makes blocking socket calls).

Each await sits inside ``fail_after``; the CLI's own ``--timeout`` bounds the worker thread.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from pithnode.node import cli, cli_query
from pithnode.node.paths import default_data_dir, socket_path
from pithnode.node.query_socket import QuerySocketServer, SocketLimits
from pithnode.protocol.events import make_native_event
from pithnode.protocol.keys import SigningKey
from pithnode.storage.errors import StoreFull
from tests.fake_node import GOLDEN, GOLDEN_PN, GOLDEN_SHA, GOLDEN_TITLE, PEER_B, FakeNode

TIMEOUT = 20.0


@pytest.fixture(autouse=True)
def query_commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if cli_query not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, cli_query])
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("PITHNODE_DATA_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cq")  # short: sun_path holds at most 107 bytes


@asynccontextmanager
async def node(fake: FakeNode, data: Path) -> AsyncIterator[Path]:
    server = QuerySocketServer(fake, socket_path(data), limits=SocketLimits())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        yield server.path
        nursery.cancel_scope.cancel()


async def pithnode(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    if argv and argv[0] != "verify" and "--timeout" not in argv:
        argv = (*argv, "--timeout", "10")  # bounds the worker thread

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(list(argv), stdout=out, stderr=err, stdin=io.BytesIO(stdin))
        return code, out.getvalue(), err.getvalue()

    with trio.fail_after(TIMEOUT):
        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


def one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


def native_event(note: str) -> dict[str, Any]:
    return make_native_event(
        SigningKey(b"\x09" * 32), event_type="citation_signature", subject=GOLDEN_PN,
        payload={"cited": GOLDEN_PN, "relation": "supports", "note": note},
        created_at="2026-05-18T00:00:00Z", signer_id="node-cli", signer_type="node",
    ).to_json()


# --------------------------------------------------------------------------- no node

async def test_no_node_running_is_exit_3(data_dir: Path) -> None:
    sock = data_dir / "node.sock"
    code, out, err = await pithnode("status", "--socket", str(sock))
    assert code == 3 and out == ""
    assert one_error_line(err) == (f"error: no pithnode is running at {sock} "
                                   "(start one with 'pithnode run')")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()  # a stale socket file: connection refused
    for argv in (["get", GOLDEN_PN], ["watch"], ["submit", "-"], ["sync"]):
        code, _, err = await pithnode(*argv, "--data-dir", str(data_dir), stdin=b"[{}]")
        assert code == 3, argv
        assert f"no pithnode is running at {sock}" in one_error_line(err)


async def test_socket_from_data_dir_and_environment(data_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async with node(FakeNode(), data_dir):
        code, out, _ = await pithnode("status", "--json", "--data-dir", str(data_dir))
        assert code == 0 and json.loads(out)["records"] == 1
        monkeypatch.setenv("PITHNODE_DATA_DIR", str(data_dir))
        code, out, _ = await pithnode("status", "--json")
        assert code == 0 and json.loads(out)["network"] == "pith-mainnet"


def test_default_data_dir_resolution() -> None:
    assert default_data_dir({"PITHNODE_DATA_DIR": "/srv/pith", "XDG_DATA_HOME": "/x"}) == \
        Path("/srv/pith")
    assert default_data_dir({"XDG_DATA_HOME": "/x", "HOME": "/home/a"}) == Path("/x/pithnode")
    assert default_data_dir({"XDG_DATA_HOME": "relative", "HOME": "/home/a"}) == \
        Path("/home/a/.local/share/pithnode")
    assert default_data_dir({"PITHNODE_DATA_DIR": "", "HOME": "/home/a"}) == \
        Path("/home/a/.local/share/pithnode")
    assert socket_path(Path("/srv/pith")) == Path("/srv/pith/node.sock")


# --------------------------------------------------------------------------- reading

async def test_status_and_peers(data_dir: Path) -> None:
    async with node(FakeNode(), data_dir) as sock:
        code, out, err = await pithnode("status", "--socket", str(sock))
        assert code == 0 and err == ""
        assert "pith-mainnet" in out and "http url" in out and "rounds 3" in out
        code, out, _ = await pithnode("status", "--socket", str(sock), "--json")
        assert json.loads(out)["gossip"] == {"in": 5, "out": 4, "rejected": 1}
        code, out, _ = await pithnode("peers", "--socket", str(sock))
        assert code == 0 and PEER_B in out and "/ip4/127.0.0.1/tcp/4001" in out
        code, out, _ = await pithnode("peers", "--socket", str(sock), "--json")
        assert [p["connected"] for p in json.loads(out)] == [True, False]


async def test_get_record(data_dir: Path) -> None:
    async with node(FakeNode(), data_dir) as sock:
        code, out, err = await pithnode("get", "1812.04754", "--socket", str(sock))
        assert code == 0 and err == ""
        for text in (GOLDEN_TITLE, GOLDEN_PN, GOLDEN_SHA, "graph snapshots", "aliases",
                     "10.48550/arxiv.1812.04754", "pith_short_8"):
            assert text in out, text
        code, out, _ = await pithnode("get", "pith:32UK2ZWI", "--socket", str(sock), "--json")
        summary = json.loads(out)
        assert summary["title"] == GOLDEN_TITLE and summary["state_sha256"] == GOLDEN_SHA
        assert summary["counts"]["event_count"] == 2 and len(summary["aliases"]) == 6
        assert summary["lists"] == {"graph_snapshots": 1}
        code, out, _ = await pithnode("get", GOLDEN_PN, "--state", "--socket", str(sock))
        assert code == 0 and out.encode("utf-8") == GOLDEN.read_bytes()


async def test_unknown_record_is_not_found_exit_2(data_dir: Path) -> None:
    async with node(FakeNode(), data_dir) as sock:
        for argv in (["get", "pith:AAAAAAAA"], ["bundle", "2101.00001"],
                     ["events", "nonsense"], ["explain", "sha256:" + "0" * 64],
                     ["sync", "--peer", "12D3KooWNobody"]):
            code, out, err = await pithnode(*argv, "--socket", str(sock))
            assert code == 2 and out == "", argv
            assert one_error_line(err).startswith("error: not found: "), err


async def test_bundle_events_explain(data_dir: Path) -> None:
    fake = FakeNode()
    async with node(fake, data_dir) as sock:
        code, out, _ = await pithnode("bundle", "pith:32UK2ZWI", "--socket", str(sock))
        assert code == 0 and out.encode() == fake.records[GOLDEN_PN].bundle_bytes
        code, _, verr = await pithnode("verify", "-", stdin=out.encode())
        assert code == 0, verr  # what `bundle` prints is a document `verify` accepts
        code, out, _ = await pithnode("events", GOLDEN_PN, "--socket", str(sock))
        assert code == 0 and "2 events" in out and "graph_snapshot" in out
        assert "pith.science (pith_registry)" in out
        code, out, _ = await pithnode("events", GOLDEN_PN, "--socket", str(sock), "--json")
        assert len(json.loads(out)["events"]) == 2
        code, out, _ = await pithnode("explain", "1812.04754", "--socket", str(sock))
        assert code == 0 and "kind: record" in out and f"pith_number: {GOLDEN_PN}" in out
        code, out, _ = await pithnode("explain", "1812.04754", "--socket", str(sock), "--json")
        assert json.loads(out)["state_sha256"] == GOLDEN_SHA


# --------------------------------------------------------------------------- writing

async def test_submit(data_dir: Path) -> None:
    fake = FakeNode()
    good, other = native_event("one"), native_event("two")
    tampered = native_event("three")
    tampered["payload"]["note"] = "edited"
    jsonl = data_dir / "events.jsonl"
    jsonl.write_text("\n".join(json.dumps(e) for e in (good, tampered)) + "\n\n")
    async with node(fake, data_dir) as sock:
        code, out, err = await pithnode("submit", str(jsonl), "--socket", str(sock))
        assert code == 1 and err == ""
        lines = out.splitlines()
        assert lines[0].split() == ["new", good["event_id"]]
        assert lines[1].split() == ["rejected", tampered["event_id"], "event_id_mismatch"]
        assert lines[2] == "1 new, 0 duplicate, 1 rejected"

        code, out, _ = await pithnode("submit", "-", "--socket", str(sock), "--json",
                                      stdin=json.dumps([good, other]).encode())
        assert code == 0
        report = json.loads(out)
        assert (report["new"], report["duplicate"], report["rejected"]) == (1, 1, 0)
        assert [o["event_id"] for o in report["outcomes"]] == [good["event_id"],
                                                                 other["event_id"]]

        bundle = fake.records[GOLDEN_PN].bundle_bytes
        code, out, _ = await pithnode("submit", "-", "--socket", str(sock), stdin=bundle)
        assert code == 1 and out.count("unsigned_registry_event") == 2

        code, out, _ = await pithnode("submit", "-", "--socket", str(sock),
                                      stdin=json.dumps(other).encode())
        assert code == 0 and out.startswith("duplicate")
        assert fake.calls.count("submit") == 4


@pytest.mark.parametrize(("data", "message"), [
    (b"", "holds no events"),
    (b"not json\nat all\n", "line 1 is not JSON"),
    (b"{", "is not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[]", "holds no events"),
    (b'{"manifest_type": "x"}', "holds no events"),
    (GOLDEN.read_bytes(), "is a state document"),
])
async def test_submit_bad_input_is_one_line_exit_2(data_dir: Path, data: bytes,
                                                   message: str) -> None:
    fake = FakeNode()
    async with node(fake, data_dir) as sock:
        code, out, err = await pithnode("submit", "-", "--socket", str(sock), stdin=data)
        assert code == 2 and out == ""
        assert message in one_error_line(err)
        assert "submit" not in fake.calls


def test_submit_batches_fit_in_a_request() -> None:
    events = [{"pad": "x" * 1000} for _ in range(10)]
    batches = cli_query.batches(events, limit=3100)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert [len(b) for b in cli_query.batches(events, max_events=4)] == [4, 4, 2]


async def test_sync(data_dir: Path) -> None:
    fake = FakeNode()
    async with node(fake, data_dir) as sock:
        code, out, _ = await pithnode("sync", "--socket", str(sock))
        assert code == 0 and "rounds" in out
        code, out, _ = await pithnode("sync", "--peer", PEER_B, "--socket", str(sock),
                                      "--json")
        assert code == 0 and json.loads(out)["peers"] == 1
        assert fake.sync_requests == [None, PEER_B]


async def test_watch(data_dir: Path) -> None:
    fake = FakeNode()
    notes = [{"kind": "event", "event_id": "sha256:" + "a" * 64, "subject": GOLDEN_PN},
             {"kind": "state", "pith_number": GOLDEN_PN, "state_sha256": GOLDEN_SHA}]
    async with node(fake, data_dir) as sock:
        for extra in ([], ["--json"]):
            results: list[tuple[int, str, str]] = []
            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    async def watch(extra: list[str] = extra,
                                    results: list[tuple[int, str, str]] = results) -> None:
                        results.append(await pithnode("watch", "--count", "2", "--socket",
                                                      str(sock), *extra))

                    nursery.start_soon(watch)
                    await fake.wait_until(lambda: fake.subscriber_count == 1)
                    for note in notes:
                        await fake.publish(note)
            [(code, out, err)] = results
            assert code == 0
            if extra:
                assert [json.loads(line) for line in out.splitlines()] == [
                    {"dropped": 0, "notification": n} for n in notes]
            else:
                assert out.splitlines() == [
                    f"event event_id=sha256:{'a' * 64} subject={GOLDEN_PN}",
                    f"state pith_number={GOLDEN_PN} state_sha256={GOLDEN_SHA}"]
                assert "watching" in err
            await fake.wait_until(lambda: fake.subscriber_count == 0)


def test_describe_notification() -> None:
    assert cli_query.describe_notification({"kind": "event", "n": 1, "l": [1, 2]}) == \
        "event n=1 l=1, 2"
    assert cli_query.describe_notification("text") == "text"


async def test_titles_are_shown_literally_not_as_markup(data_dir: Path) -> None:
    fake = FakeNode()
    rec = fake.records[GOLDEN_PN]
    tricky = "[red]Spin[/red] glasses [link=x] and [1] more"
    rec.state_bytes = rec.state_bytes.replace(GOLDEN_TITLE.encode(), tricky.encode())
    async with node(fake, data_dir) as sock:
        code, out, err = await pithnode("get", GOLDEN_PN, "--socket", str(sock))
        assert code == 0 and err == ""
        assert out.count(tricky) == 2  # the panel's title and its row


async def test_unusable_answers_are_one_line_exit_2(data_dir: Path) -> None:
    fake = FakeNode()
    fake.records[GOLDEN_PN].bundle_bytes = b"[1,2]"
    async with node(fake, data_dir) as sock:
        code, out, err = await pithnode("bundle", GOLDEN_PN, "--socket", str(sock))
        assert code == 2 and out == ""
        assert "answer to record.bundle lacks a usable 'bundle'" in one_error_line(err)


# --------------------------------------------------------------------------- failures

async def test_node_errors_are_one_line_exit_2(data_dir: Path) -> None:
    fake = FakeNode()
    fake.failing.add("status")
    async with node(fake, data_dir) as sock:
        code, out, err = await pithnode("status", "--socket", str(sock))
        assert code == 2 and out == ""
        assert one_error_line(err) == ("error: the node refused the request: internal "
                                       "error (see the node's log)")
        fake.gate = trio.Event()  # a durable commit that never completes in time
        code, _, err = await pithnode("submit", "-", "--socket", str(sock), "--timeout",
                                      "0.2", stdin=json.dumps([native_event("x")]).encode())
        assert code == 2 and "did not answer in time" in one_error_line(err)
        assert "raise --timeout" in err
        fake.gate.set()


async def test_a_full_disk_is_one_line_exit_2(data_dir: Path) -> None:
    fake = FakeNode()

    async def submit(events: list[Any]) -> Any:
        raise StoreFull("cannot store the batch: database or disk is full")

    fake.submit = submit  # type: ignore[method-assign]
    async with node(fake, data_dir) as sock:
        code, out, err = await pithnode("submit", "-", "--socket", str(sock),
                                        stdin=json.dumps([native_event("x")]).encode())
    assert code == 2 and out == ""
    assert one_error_line(err).startswith(
        "error: the node could not use its store: store full / disk full: cannot store the "
        "batch: database or disk is full (free disk space under the data directory")


@pytest.mark.parametrize("argv", [["get"], ["status", "--timeout", "0"],
                                  ["watch", "--count", "0"], ["sync", "extra"]])
async def test_usage_errors(argv: list[str]) -> None:
    code, _, err = await pithnode(*argv)
    assert code == 2
    one_error_line(err)
