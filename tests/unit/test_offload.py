"""The worker side of fhir/offload.py's body files, called directly: what it does when the server
has already given up the request (its file removed) must not leave anything behind."""

from __future__ import annotations

import os

import pytest

from fhir_server.fhir import offload


def _shell_and_blob(data: bytes) -> offload.WithBlob:
    return offload.WithBlob({"size": len(data)}, data[::-1])


def test_a_blob_goes_back_through_the_bodys_own_file(tmp_path):
    path = tmp_path / "fhir-body-x"
    path.write_bytes(b"0123456789")
    result = offload._with_spooled(str(path), _shell_and_blob, ())
    assert isinstance(result, offload._BlobInFile) and result.value == {"size": 10} and result.size == 10
    assert path.read_bytes() == b"9876543210"


def test_a_blob_for_a_request_given_up_is_not_written_to_a_new_file(tmp_path, monkeypatch):
    path = tmp_path / "fhir-body-y"
    path.write_bytes(b"abc")
    real = offload._read_spool

    def read_then_server_gives_up(p: str) -> bytes:
        data = real(p)
        os.unlink(p)  # what run_with_bytes' `finally` does when the request is cancelled meanwhile
        return data

    monkeypatch.setattr(offload, "_read_spool", read_then_server_gives_up)
    with pytest.raises(FileNotFoundError):
        offload._with_spooled(str(path), _shell_and_blob, ())
    assert os.listdir(tmp_path) == []


def test_a_body_file_made_after_its_request_was_cancelled_is_removed(tmp_path, monkeypatch):
    """The body's file is made on a thread; a request cancelled meanwhile (shutdown) used to leave it."""
    import asyncio
    import threading

    entered, gate = threading.Event(), threading.Event()
    real_write, real_remove = offload._write_spool, offload._remove_spool
    monkeypatch.setattr(offload, "_spool_dir", lambda: str(tmp_path))

    def held_write(data: bytes) -> str:
        entered.set()
        assert gate.wait(30)
        return real_write(data)

    monkeypatch.setattr(offload, "_write_spool", held_write)

    async def scenario() -> None:
        removed = asyncio.Event()

        def remove(done) -> None:
            real_remove(done)
            removed.set()

        monkeypatch.setattr(offload, "_remove_spool", remove)
        task = asyncio.ensure_future(offload.run_with_bytes(b"x" * 100, len))
        await asyncio.to_thread(entered.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()  # the thread now makes the file, after its request is gone
        await asyncio.wait_for(removed.wait(), 30)

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        offload.POOL.shutdown()
    assert os.listdir(tmp_path) == []
