#!/usr/bin/env python3
"""MCP server peer for STOA's end-to-end tests (official Python SDK, mcp 2.3.0).

Serves a fixed, deterministic set of tools over one of two HTTP transports:

* ``streamable-http``: one endpoint, ``/mcp``. Stateful by default: an
  ``initialize`` opens a session (``Mcp-Session-Id``) for the handshake-era
  protocol versions (2024-11-05 .. 2025-11-25). The same endpoint also answers
  stateless 2026-07-28 requests: the SDK routes every request whose
  ``MCP-Protocol-Version`` header names a non-handshake version to its
  per-request ("modern") handler, whatever the session mode.
* ``sse``: the legacy 2024-11-05 HTTP+SSE transport: ``GET /sse`` opens the
  event stream, whose first event (``endpoint``) names the URL to POST
  messages to (``/messages/?session_id=<hex>``).

Every tool invocation that actually runs appends one JSON line
``{"tool": ..., "arguments": ..., "replica": ...}`` to ``--calls-log``
(flushed at once), so a test can prove that a denied call never got here.

Run ``mcp_server.py --help`` for the options; see README.md for the protocol facts.
"""

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from pydantic import Field

# The 64 KiB tail of every slow_count result: this 64-character alphabet, 1024 times.
PAYLOAD_UNIT = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_"
PAYLOAD = PAYLOAD_UNIT * 1024
assert len(PAYLOAD) == 65536

def slow_count_text(n: int) -> str:
    """The exact text slow_count returns: n lines "line i" (i = 0..n-1), then PAYLOAD (no trailing newline)."""
    return "".join(f"line {i}\n" for i in range(n)) + PAYLOAD


class CallsLog:
    """Appends one JSON line per executed tool call; safe across threads (sync tools run in a worker)."""

    def __init__(self, path: str | None, replica: str) -> None:
        self.replica = replica
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 - lives as long as the process

    def record(self, ctx: Context) -> None:
        """Log the call `ctx` belongs to, with its arguments exactly as the request carried them."""
        params = ctx.request_context.params or {}
        entry = {"tool": params.get("name"), "arguments": params.get("arguments") or {}, "replica": self.replica}
        line = json.dumps(entry, separators=(",", ":"))
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()


def build_server(replica: str, calls: CallsLog, page_size: int | None, param_header: bool) -> MCPServer:
    mcp = MCPServer(
        "stoa-test-peer",
        version="1.0.0",
        instructions=f"STOA end-to-end test peer, replica {replica}",
        log_level="WARNING",
    )
    readonly = types.ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)

    @mcp.tool(description="Echo the text back unchanged.", annotations=readonly, structured_output=False)
    def echo(text: str, ctx: Context) -> str:
        calls.record(ctx)
        return text

    @mcp.tool(description="Add two integers.", annotations=readonly)
    def add(a: int, b: int, ctx: Context) -> int:
        calls.record(ctx)
        return a + b

    region_type: Any = str
    if param_header:
        # 2026-07-28: a client that listed this tool mirrors `region` into an `Mcp-Param-Region` header,
        # and the server rejects a tools/call whose header and argument disagree (HEADER_MISMATCH, -32020).
        region_type = Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]

    def search_customers(ctx: Context, query: str, region: region_type = "eu") -> str:  # type: ignore[valid-type]
        calls.record(ctx)
        return f"customers matching {query!r} in {region}: ACME-{region.upper()}-1, ACME-{region.upper()}-2"

    mcp.add_tool(
        search_customers,
        description="Search the customer directory.",
        annotations=readonly,
        structured_output=False,
    )

    @mcp.tool(
        description="Delete a customer record.",
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True),
        structured_output=False,
    )
    def delete_customer(customer_id: str, ctx: Context) -> str:
        calls.record(ctx)
        return f"deleted customer {customer_id}"

    @mcp.tool(
        description="Send the invoice of a customer; api_token is a secret.",
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False),
        structured_output=False,
    )
    def send_invoice(customer_id: str, api_token: str, ctx: Context) -> str:
        calls.record(ctx)
        return f"invoice sent to {customer_id} (token of {len(api_token)} characters)"

    @mcp.tool(description="Name of the replica that answers.", annotations=readonly, structured_output=False)
    def whoami(ctx: Context) -> str:
        calls.record(ctx)
        return replica

    @mcp.tool(
        description="The HTTP request headers this call arrived with, as a JSON object (lower-case names).",
        annotations=readonly,
        structured_output=False,
    )
    def request_headers(ctx: Context) -> str:
        calls.record(ctx)
        headers = ctx.headers or {}
        return json.dumps({k.lower(): v for k, v in headers.items()}, sort_keys=True)

    @mcp.tool(
        description=(
            "Send n progress notifications delay_ms apart (when the caller asked for progress), then return "
            "n lines 'line i' followed by a 64 KiB payload."
        ),
        annotations=readonly,
        structured_output=False,
    )
    async def slow_count(n: int, delay_ms: int, ctx: Context) -> str:
        calls.record(ctx)
        if n < 0 or n > 10_000 or delay_ms < 0 or delay_ms > 60_000:
            raise ToolError("n must be in 0..10000 and delay_ms in 0..60000")
        for i in range(n):
            await ctx.report_progress(i + 1, n, f"line {i}")
            await anyio.sleep(delay_ms / 1000)
        return slow_count_text(n)

    @mcp.tool(description="Always fails with a tool error (isError: true).", structured_output=False)
    def fail(ctx: Context) -> str:
        calls.record(ctx)
        raise ToolError("this tool always fails")

    def make_dummy(tool_name: str):
        def dummy(ctx: Context, value: str = "") -> str:
            calls.record(ctx)
            return f"{tool_name} ok {value}".rstrip()

        return dummy

    for k in range(1, 5):
        mcp.add_tool(
            make_dummy(f"tool_{k:02d}"),
            name=f"tool_{k:02d}",
            description=f"Dummy tool number {k}.",
            annotations=readonly,
            structured_output=False,
        )

    if page_size is not None:
        install_paginated_tools_list(mcp, page_size)
    return mcp


def install_paginated_tools_list(mcp: MCPServer, page_size: int) -> None:
    """Replace MCPServer's one-page tools/list with one that serves `page_size` tools per page.

    The cursor is an opaque string to clients; here it is "offset-<index of the first tool of the page>".
    """

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams) -> types.ListToolsResult:
        tools = await mcp.list_tools()
        cursor = params.cursor
        start = 0
        if cursor is not None:
            prefix, _, number = cursor.partition("-")
            if prefix != "offset" or not number.isdigit() or int(number) > len(tools):
                raise MCPError(code=types.INVALID_PARAMS, message=f"invalid cursor {cursor!r}")
            start = int(number)
        end = start + page_size
        next_cursor = f"offset-{end}" if end < len(tools) else None
        return types.ListToolsResult(tools=tools[start:end], next_cursor=next_cursor)

    mcp._lowlevel_server.add_request_handler("tools/list", types.PaginatedRequestParams, list_tools)  # pyright: ignore[reportPrivateUsage]


def build_app(args: argparse.Namespace, mcp: MCPServer) -> Any:
    # The SDK turns on DNS-rebinding protection (Host/Origin allow-lists) when bound to a loopback
    # address; a proxy in between may forward other Host values, so it is off unless asked for.
    security = TransportSecuritySettings(enable_dns_rebinding_protection=args.dns_rebinding_protection)
    if args.dns_rebinding_protection:
        security.allowed_hosts = [f"{args.host}:*", "127.0.0.1:*", "localhost:*"]
        security.allowed_origins = [f"http://{args.host}:*", "http://127.0.0.1:*", "http://localhost:*"]
    if args.transport == "sse":
        return mcp.sse_app(sse_path="/sse", message_path="/messages/", transport_security=security, host=args.host)
    return mcp.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=args.json_response,
        stateless_http=args.stateless,
        transport_security=security,
        host=args.host,
    )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: SIGTERM (see main) ends the process at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(args: argparse.Namespace, app: Any) -> None:
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
    )
    server = _Server(config)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await anyio.sleep(0.01)
        path = "/sse" if args.transport == "sse" else "/mcp"
        url = f"http://{args.host}:{args.port}{path}"
        print(f"mcp_server[{args.replica}] ready: {args.transport} on {url}", file=sys.stderr)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await server.serve()
        tg.cancel_scope.cancel()
    if not server.started:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description="MCP server peer for STOA's end-to-end tests")
    parser.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replica", default="a", help="name whoami() answers and the calls log records")
    parser.add_argument("--calls-log", metavar="FILE", help="append one JSON line per executed tool call")
    parser.add_argument("--page-size", type=int, metavar="N", help="serve tools/list in pages of N tools")
    parser.add_argument(
        "--stateless",
        action="store_true",
        help="streamable-http: no sessions for the handshake-era versions either (no Mcp-Session-Id)",
    )
    parser.add_argument(
        "--json-response",
        action="store_true",
        help="streamable-http: answer every request POST with application/json, never an SSE stream "
        "(progress notifications are then dropped)",
    )
    parser.add_argument(
        "--param-header",
        action="store_true",
        help="annotate search_customers.region with x-mcp-header: Region (2026-07-28 Mcp-Param-Region)",
    )
    parser.add_argument(
        "--dns-rebinding-protection",
        action="store_true",
        help="check Host/Origin against loopback names (the SDK default on loopback; off here)",
    )
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args()
    if args.page_size is not None and args.page_size < 1:
        parser.error("--page-size must be at least 1")
    if args.transport == "sse" and (args.stateless or args.json_response):
        parser.error("--stateless and --json-response apply to streamable-http only")

    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format=f"mcp_server[{args.replica}] %(levelname)s %(name)s: %(message)s",
    )

    # SIGTERM ends the process at once (exit status 0), open streams or not; the calls log is
    # flushed line by line, so nothing is lost.
    def on_sigterm(signum: int, frame: Any) -> None:
        os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)

    calls = CallsLog(args.calls_log, args.replica)
    mcp = build_server(args.replica, calls, args.page_size, args.param_header)
    app = build_app(args, mcp)
    try:
        anyio.run(serve, args, app)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
