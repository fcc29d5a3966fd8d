"""The socket side of the governor: the unix socket launchers connect to, and one connection's
conversation (admit -> go -> started -> output... -> done -> ok/retry/fail, or remote-done when a
`RemoteExecutor` runs the job). Message syntax and the socket's safety are protocol.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
from pathlib import Path

from buildctl.govern import profiles
from buildctl.govern.cache import compiler_argv
from buildctl.govern.jobs import Job, MiB
from buildctl.govern.outcome import oom_kills
from buildctl.govern.protocol import (
    ProtocolError,
    bad_client_line,
    check_child_pid,
    parse_message,
    prepare_socket_dir,
)
from buildctl.govern.state import GovernorState

LINE_LIMIT = 16 * MiB


def _compile_fingerprint(argv: list[str], cwd: str) -> tuple[str, int]:
    """profiles.compile_fingerprint with the source's content digest read here (the edge), and
    the source's size (sibling predictions scale by it)."""
    source = profiles.compile_source(argv)
    digest = ""
    size = 0
    if source:
        path = Path(cwd, source) if cwd else Path(source)
        try:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            size = len(data)
        except OSError:
            digest = "unreadable"
    return profiles.compile_fingerprint(argv, digest), size


class SocketServer(GovernorState):
    """Listens for launchers and talks to each one; decisions are admission's and finish's."""

    async def _listen(self) -> None:
        """The socket, born 0600 in a directory protocol.py vouches for."""
        path = self.opts.socket_path
        prepare_socket_dir(path.parent)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old_umask = os.umask(0o177)  # the socket is born 0600
        try:
            # Lines carry a job's environment and output tail: far above asyncio's 64 KiB default.
            self._server = await asyncio.start_unix_server(
                self._handle, path=str(path), limit=LINE_LIMIT
            )
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        peer_pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            writer.close()  # only our own user's launchers may ask for memory
            return
        job: Job | None = None
        try:
            msg = await self._read(reader, ("admit",))
            if msg is None:
                return
            job = await self._register(msg)
            while True:
                await job.go.wait()
                job.go.clear()
                if self.opts.executor is not None:
                    facts = await self.opts.executor.run(job)
                    reply = self._finish(job, facts)
                    if reply["op"] == "retry":
                        continue
                    await self._send(
                        writer,
                        op="remote-done",
                        rc=int(facts.get("rc", 1)),
                        stdout=facts.get("stdout", ""),
                        stderr=facts.get("stderr", "") + (
                            f"buildctl: {reply['detail']}\n" if reply.get("detail") else ""
                        ),
                    )
                    return
                job.oom_at_start = oom_kills()
                await self._send(writer, op="go", attempt=job.attempts)
                started = await self._read(reader, ("started",))
                if started is None:
                    return
                check_child_pid(started["pid"], peer_pid)
                with self._lock:
                    job.child_pid = int(started["pid"])
                done = await self._read_until_done(job, reader)
                if done is None:
                    return
                with self._lock:
                    job.child_pid = None  # reaped by the launcher: never signal that pid again
                reply = await self._complete(job, done)
                await self._send(writer, **reply)
                if reply["op"] != "retry":
                    return
        except ProtocolError as exc:  # one line per bad client; the launcher sees EOF
            self.event("info", job.output if job else None, bad_client_line(str(exc), peer_pid))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The governor stops while this launcher still waits (ninja killed, Ctrl-C): end
            # quietly. A task left cancelled makes Python 3.11's stream callback log a
            # CancelledError traceback for every such connection.
            pass
        finally:
            # At stop, running trees are already killed and the report takes jobs as they are.
            if job is not None and job.state != "done" and not self._stopping:
                self._abandon(job)
            writer.close()

    async def _read_until_done(self, job: Job, reader: asyncio.StreamReader) -> dict | None:
        """Messages while the job runs: output tails (kept for a stall bundle), then `done`."""
        while True:
            msg = await self._read(reader, ("output", "done"))
            if msg is None or msg.get("op") == "done":
                return msg
            if msg.get("op") == "output":
                job.output_tail = str(msg.get("tail", ""))

    async def _read(self, reader: asyncio.StreamReader, expect: tuple[str, ...]) -> dict | None:
        """The next launcher message (None at EOF); ProtocolError for anything else."""
        try:
            line = await reader.readline()
        except ValueError:  # asyncio's limit: the rest of the line is not read
            raise ProtocolError(f"a line longer than {LINE_LIMIT} bytes") from None
        if not line:
            return None
        if not line.endswith(b"\n"):
            raise ProtocolError("connection closed in the middle of a line")
        return parse_message(line, expect)

    async def _send(self, writer: asyncio.StreamWriter, **msg: object) -> None:
        writer.write(json.dumps(msg).encode() + b"\n")
        await writer.drain()

    async def _compiler_id(self, exe: str) -> str:
        path = shutil.which(exe) or exe
        real = os.path.realpath(path)
        try:
            mtime = os.stat(real).st_mtime
        except OSError:
            return os.path.basename(exe)
        key = (real, mtime)
        if key not in self._compiler_ids:
            # One `--version` per compiler binary, even when the first launchers all register
            # at once: later ones wait for the first one's answer.
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._compiler_ids[key] = future
            ident = os.path.basename(exe)
            try:
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    proc = await asyncio.create_subprocess_exec(
                        real,
                        "--version",
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                    out, _ = await asyncio.wait_for(proc.communicate(), 10)
                    first = out.decode(errors="replace").strip().splitlines()[:1]
                    if first:
                        ident = f"{os.path.basename(exe)}: {first[0]}"
            finally:
                future.set_result(ident)  # never leave the waiting registrations hanging
        return await asyncio.shield(self._compiler_ids[key])

    async def _register(self, msg: dict) -> Job:
        argv = list(msg["argv"])
        cwd = msg.get("cwd", "")
        output = str(msg.get("output", ""))
        if os.path.isabs(output) and cwd and output.startswith(cwd.rstrip("/") + "/"):
            output = os.path.relpath(output, cwd)
        real = compiler_argv(argv) or argv  # the compiler under a ccache/sccache wrapper
        compiler = await self._compiler_id(real[0])
        kind = msg.get("kind", "other")
        fingerprint, source_bytes = (
            _compile_fingerprint(real, cwd) if kind == "compile" else ("", 0)
        )
        return self.enqueue(
            output,
            kind,
            compiler,
            argv=argv,
            cwd=cwd,
            fingerprint=fingerprint,
            source_bytes=source_bytes,
            launcher_pid=int(msg.get("pid", 0)),
            env=msg.get("env"),
        )
