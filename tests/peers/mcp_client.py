#!/usr/bin/env python3
"""MCP client peer for STOA's end-to-end tests: the official Python SDK (mcp 2.3.0) as a CLI.

    mcp_client.py --url URL [--transport streamable-http|sse] [--era modern|legacy|auto]
                  [--header 'Name: value']... [--timeout SECS] [--no-progress] [--no-validate] [--verbose]
                  list | call NAME [ARGS_JSON] | script | raw [--method M] [--body S | --body-file F]
                  [--no-default-headers]

The options may also follow the subcommand (``call --url URL echo '{"text": "hi"}'``).

Every subcommand prints JSON lines on stdout (see README.md for the shapes). Exit status:
0 every operation answered ok, 1 some operation got a JSON-RPC error, 2 usage error,
3 transport failure (``{"ok": false, "transport_error": ...}``).
"""

import argparse
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

ERA_MODE = {"modern": "2026-07-28", "legacy": "legacy", "auto": "auto"}
MAX_PAGES = 1000

# MCPError codes/messages the SDK makes up itself when no answer arrives (never read off the wire).
_SYNTHESIZED = [
    (types.REQUEST_TIMEOUT, re.compile(r"Request '.*' timed out")),
    (types.CONNECTION_CLOSED, re.compile(r"Connection closed|SSE stream (ended|failed)")),
]


class TransportFailure(Exception):
    """No MCP answer: connection refused or dropped, timeout, HTTP error without a JSON-RPC body."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status

    def output(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": False, "transport_error": str(self)}
        if self.http_status is not None:
            out["http_status"] = self.http_status
        return out


class Failed(Exception):
    """Raised after an error line is printed, to end the run with the given exit status."""

    def __init__(self, status: int) -> None:
        self.status = status


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must look like 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def describe(exc: BaseException) -> str:
    """One line naming the innermost cause of `exc` (exception groups included)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    cause = exc
    while cause.__cause__ is not None and not isinstance(cause, MCPError):
        cause = cause.__cause__
    text = str(cause) or type(cause).__name__
    return f"{type(cause).__name__}: {text}"


def find_mcp_error(exc: BaseException) -> MCPError | None:
    if isinstance(exc, MCPError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := find_mcp_error(inner)) is not None:
                return found
    return None


class HttpStatuses:
    """Remembers status and content type of the last POST per JSON-RPC method (httpx2 event hook)."""

    def __init__(self) -> None:
        self.by_method: dict[str, tuple[int, str]] = {}

    async def on_response(self, response: httpx2.Response) -> None:
        request = response.request
        if request.method != "POST":
            return
        try:
            method = json.loads(request.content).get("method")
        except (ValueError, AttributeError, httpx2.RequestNotRead):
            return
        if isinstance(method, str):
            self.by_method[method] = (response.status_code, response.headers.get("content-type", ""))


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.statuses = HttpStatuses()
        self.any_error = False
        self.status: int | None = None

    def http_client(
        self, headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None, auth: Any = None
    ) -> httpx2.AsyncClient:
        # Streams may legitimately stay silent (slow tools, script sleeps): no read timeout at the HTTP
        # layer; every MCP request carries its own deadline (--timeout) instead.
        t = self.args.timeout
        merged = dict(headers or {})
        merged.update(self.args.headers)
        return httpx2.AsyncClient(
            headers=merged,
            timeout=httpx2.Timeout(connect=t, read=None, write=t, pool=t),
            auth=auth,
            event_hooks={"response": [self.statuses.on_response]},
        )

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Client]:
        args = self.args
        if args.transport == "sse":
            transport: Any = sse_client(
                args.url,
                timeout=args.timeout,
                sse_read_timeout=None,  # type: ignore[arg-type]  # httpx2 reads None as "no limit"
                httpx_client_factory=self.http_client,
            )
            async with Client(transport, mode="legacy", read_timeout_seconds=args.timeout, cache=None) as client:
                yield client
            return
        async with self.http_client() as http:
            transport = streamable_http_client(args.url, http_client=http)
            # cache=None: every list/call must reach the wire.
            async with Client(
                transport, mode=ERA_MODE[args.era], read_timeout_seconds=args.timeout, cache=None
            ) as client:
                yield client

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Client]:
        async with AsyncExitStack() as stack:
            try:
                client = await stack.enter_async_context(self.open())
            except Exception as exc:  # ExceptionGroup included
                self.fail_connect(exc)
            yield client

    def fail_connect(self, exc: BaseException) -> None:
        err = find_mcp_error(exc)
        method = "initialize" if "initialize" in self.statuses.by_method else "server/discover"
        if err is not None and not self.synthesized(err):
            if (failure := self.http_failure(method)) is not None:
                emit(TransportFailure(failure, self.statuses.by_method[method][0]).output() | {"phase": "connect"})
                raise Failed(3) from exc
            emit(self.error_obj(err, method) | {"phase": "connect"})
            raise Failed(1) from exc
        emit({"ok": False, "transport_error": describe(exc), "phase": "connect"})
        raise Failed(3) from exc

    @staticmethod
    def synthesized(err: MCPError) -> bool:
        return any(err.code == code and pattern.fullmatch(err.message) for code, pattern in _SYNTHESIZED)

    def error_obj(self, err: MCPError, method: str) -> dict[str, Any]:
        obj: dict[str, Any] = {"ok": False, "error": {"code": err.code, "message": err.message, "data": err.error.data}}
        if (seen := self.statuses.by_method.get(method)) is not None:
            obj["http_status"] = seen[0]
        return obj

    def http_failure(self, method: str) -> str | None:
        """'HTTP <status>' when the POST for `method` got an HTTP error without a JSON-RPC body.

        The SDK then makes up a stand-in MCPError (-32603 "Server returned an error response",
        -32601 "Not Found", -32600 "Session terminated"): nothing the peer said.
        """
        seen = self.statuses.by_method.get(method)
        if seen is None or seen[0] < 400 or seen[1].lower().startswith("application/json"):
            return None
        return f"HTTP {seen[0]}"

    async def op(self, method: str, action: Callable[[], Any]) -> dict[str, Any]:
        """Run one MCP operation; return its output object, or raise TransportFailure."""
        self.statuses.by_method.clear()
        try:
            return await action()
        except MCPError as err:
            if self.synthesized(err):
                raise TransportFailure(err.message) from err
            if (failure := self.http_failure(method)) is not None:
                raise TransportFailure(failure, self.statuses.by_method[method][0]) from err
            self.any_error = True
            return self.error_obj(err, method)
        except TimeoutError as exc:
            raise TransportFailure("timed out") from exc

    async def list_tools(self, client: Client) -> dict[str, Any]:
        names: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            pages += 1
            names.extend(tool.name for tool in page.tools)
            cursor = page.next_cursor
            if cursor is None or pages >= MAX_PAGES:
                break
        return {"ok": True, "tools": names, "pages": pages}

    async def call_tool(self, client: Client, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        callback = None if self.args.no_progress else on_progress
        if self.args.no_validate:
            # What Client.call_tool sends, minus its extras: no tools/list to fetch the output schema of a
            # tool this session has not listed, no re-list and resend after a HEADER_MISMATCH.
            request = types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=arguments))
            result = await client.session.send_request(request, types.CallToolResult, progress_callback=callback)
        else:
            result = await client.call_tool(name, arguments, progress_callback=callback)
        text = "".join(block.text for block in result.content if isinstance(block, types.TextContent))
        return {
            "ok": True,
            "isError": bool(result.is_error),
            "text": text,
            "structured": result.structured_content,
            "progress": len(progress),
        }

    async def run_ops(self, ops: list[dict[str, Any]]) -> int:
        # A hard deadline for the whole run, so a peer that never answers cannot hang the test
        # (each request also carries its own --timeout deadline).
        budget = self.args.timeout * (2 * len(ops) + 2) + sum(float(op.get("seconds", 0)) for op in ops)
        try:
            with anyio.fail_after(budget):
                return await self._run_ops(ops)
        except TimeoutError:
            if self.status is not None:
                return self.status
            emit({"ok": False, "transport_error": f"timed out after {budget:g} s"})
            return 3

    async def _run_ops(self, ops: list[dict[str, Any]]) -> int:
        async with self.connect() as client:
            for spec in ops:
                kind = spec.get("op")
                try:
                    if kind == "list":
                        out = await self.op("tools/list", lambda: self.list_tools(client))
                    elif kind == "call":
                        name, arguments = spec.get("name"), spec.get("arguments")
                        out = await self.op("tools/call", lambda: self.call_tool(client, name, arguments))
                    elif kind == "sleep":
                        await anyio.sleep(float(spec.get("seconds", 0)))
                        out = {"ok": True, "slept": spec.get("seconds", 0)}
                    else:
                        emit({"ok": False, "usage_error": f"unknown op {kind!r}"})
                        self.status = 2
                        return 2
                except TransportFailure as exc:
                    emit(exc.output())
                    self.status = 3
                    return 3
                except Exception as exc:  # an SDK-side failure (bad response shape, ...) is a transport failure
                    emit({"ok": False, "transport_error": describe(exc)})
                    self.status = 3
                    return 3
                emit(out)
            # Every op answered: a failure while closing the session changes nothing.
            self.status = 1 if self.any_error else 0
        return self.status


def validate_ops(ops: Any) -> list[dict[str, Any]]:
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise ValueError("script must be a JSON array of objects")
    for op in ops:
        if op.get("op") == "call":
            if not isinstance(op.get("name"), str):
                raise ValueError(f"call op needs a string name: {op}")
            if op.get("arguments") is not None and not isinstance(op["arguments"], dict):
                raise ValueError(f"call op arguments must be an object: {op}")
        elif op.get("op") not in ("list", "sleep"):
            raise ValueError(f"unknown op: {op}")
    return ops


def raw_request(args: argparse.Namespace) -> int:
    """One HTTP request exactly as asked (plus default content-type/accept unless --no-default-headers)."""
    if args.body_file is not None:
        with open(args.body_file, "rb") if args.body_file != "-" else sys.stdin.buffer as f:  # noqa: SIM115
            body: bytes | None = f.read()
    else:
        body = args.body.encode() if args.body is not None else None
    headers: list[tuple[str, str]] = []
    given = {name.lower() for name, _ in args.headers_list}
    if not args.no_default_headers:
        if body is not None and "content-type" not in given:
            headers.append(("Content-Type", "application/json"))
        if "accept" not in given:
            headers.append(("Accept", "application/json, text/event-stream"))
    headers.extend(args.headers_list)
    try:
        with httpx2.Client(timeout=httpx2.Timeout(args.timeout)) as http:
            if args.no_default_headers:
                http.headers.clear()  # no Accept/Accept-Encoding/User-Agent either: only Host, length and --header
            response = http.request(args.method, args.url, content=body, headers=headers)
    except httpx2.HTTPError as exc:
        emit({"ok": False, "transport_error": describe(exc)})
        return 3
    merged: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        key = name.lower()
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    emit({"status": response.status_code, "headers": merged, "body": response.content.decode("utf-8", "replace")})
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="MCP endpoint (…/mcp) or SSE endpoint (…/sse)")
    common.add_argument("--transport", choices=["streamable-http", "sse"], default=argparse.SUPPRESS)
    common.add_argument(
        "--era",
        choices=sorted(ERA_MODE),
        default=argparse.SUPPRESS,
        help="modern = 2026-07-28 stateless (default for streamable-http), legacy = initialize handshake "
        "at 2025-11-25 (always for sse), auto = server/discover probe, falling back to legacy",
    )
    common.add_argument(
        "--header",
        dest="header_args",
        action="append",
        type=parse_header,
        default=argparse.SUPPRESS,
        metavar="'NAME: VALUE'",
        help="extra header on every HTTP request (repeatable)",
    )
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds per request (default 30)")
    common.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS, help="ask for no progress")
    common.add_argument(
        "--no-validate",
        action="store_true",
        default=argparse.SUPPRESS,
        help="call through session.send_request: no tools/list after a call to validate its output schema",
    )
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="SDK logs on stderr")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common], help="list every tool, following every page")
    call = sub.add_parser("call", parents=[common], help="call one tool")
    call.add_argument("name")
    call.add_argument("arguments", nargs="?", default=None, help="JSON object")
    sub.add_parser("script", parents=[common], help="run a JSON array of ops from stdin in one session")
    raw = sub.add_parser("raw", parents=[common], help="send one raw HTTP request")
    raw.add_argument("--method", default="POST")
    raw.add_argument("--body", default=None)
    raw.add_argument("--body-file", default=None, help="file with the body, - for stdin")
    raw.add_argument("--no-default-headers", action="store_true")
    return parser


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    defaults = {
        "url": None,
        "transport": "streamable-http",
        "era": None,
        "header_args": [],
        "timeout": 30.0,
        "no_progress": False,
        "no_validate": False,
        "verbose": False,
    }
    for key, value in defaults.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    if args.url is None:
        parser.error("--url is required")
    if args.era is None:
        args.era = "legacy" if args.transport == "sse" else "modern"
    if args.transport == "sse" and args.era != "legacy":
        parser.error("the sse transport (2024-11-05 HTTP+SSE) only speaks the legacy era")
    args.headers_list = list(args.header_args)
    args.headers = dict(args.header_args)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.CRITICAL + 1,
        stream=sys.stderr,
        format="mcp_client %(levelname)s %(name)s: %(message)s",
    )

    if args.command == "raw":
        return raw_request(args)
    if args.command == "list":
        ops: list[dict[str, Any]] = [{"op": "list"}]
    elif args.command == "call":
        try:
            arguments = json.loads(args.arguments) if args.arguments is not None else None
        except ValueError as exc:
            parser.error(f"ARGS_JSON is not JSON: {exc}")
        if arguments is not None and not isinstance(arguments, dict):
            parser.error("ARGS_JSON must be a JSON object")
        ops = [{"op": "call", "name": args.name, "arguments": arguments}]
    else:
        try:
            ops = validate_ops(json.load(sys.stdin))
        except ValueError as exc:
            emit({"ok": False, "usage_error": str(exc)})
            return 2

    runner = Runner(args)
    try:
        return anyio.run(runner.run_ops, ops)
    except Failed as failed:
        return failed.status
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if runner.status is not None:
            return runner.status
        failed = next((e for e in _leaves(exc) if isinstance(e, Failed)), None)
        if failed is not None:
            return failed.status
        emit({"ok": False, "transport_error": describe(exc)})
        return 3


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


if __name__ == "__main__":
    sys.exit(main())
