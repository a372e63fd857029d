#!/usr/bin/env node
// MCP client peer for STOA's end-to-end tests: @modelcontextprotocol/sdk (TypeScript SDK 1.32.2) as a CLI.
//
//   node mcp_client.mjs --url URL [--transport streamable-http|sse] [--era legacy]
//                       [--header 'Name: value']... [--timeout SECS] [--no-progress]
//                       list | call NAME [ARGS_JSON] | script
//
// Same output lines and exit statuses as mcp_client.py (see README.md). This SDK speaks the
// handshake-era versions only (up to 2025-11-25), so --era is always legacy.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';

const MAX_PAGES = 1000;

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function usage(message) {
    process.stderr.write(
        'usage: node mcp_client.mjs --url URL [--transport streamable-http|sse] [--era legacy] ' +
            "[--header 'Name: value']... [--timeout SECS] [--no-progress] list | call NAME [ARGS_JSON] | script\n" +
            `mcp_client.mjs: error: ${message}\n`
    );
    process.exit(2);
}

function parseArgs(argv) {
    const opts = { url: null, transport: 'streamable-http', era: 'legacy', headers: [], timeout: 30, progress: true };
    const positional = [];
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        const value = () => {
            if (i + 1 >= argv.length) usage(`${arg} needs a value`);
            return argv[++i];
        };
        if (arg === '--url') opts.url = value();
        else if (arg === '--transport') opts.transport = value();
        else if (arg === '--era') opts.era = value();
        else if (arg === '--timeout') opts.timeout = Number(value());
        else if (arg === '--no-progress') opts.progress = false;
        else if (arg === '--header') {
            const text = value();
            const at = text.indexOf(':');
            if (at <= 0) usage(`header must look like 'Name: value', got ${JSON.stringify(text)}`);
            opts.headers.push([text.slice(0, at).trim(), text.slice(at + 1).trim()]);
        } else if (arg.startsWith('--')) usage(`unknown option ${arg}`);
        else positional.push(arg);
    }
    if (!opts.url) usage('--url is required');
    if (!['streamable-http', 'sse'].includes(opts.transport)) usage(`unknown transport ${opts.transport}`);
    if (opts.era !== 'legacy') {
        usage('@modelcontextprotocol/sdk 1.32.2 speaks the handshake-era versions only (up to 2025-11-25): --era legacy');
    }
    if (!(opts.timeout > 0)) usage('--timeout must be a positive number of seconds');
    const [command, ...rest] = positional;
    if (command === 'list' && rest.length === 0) opts.ops = [{ op: 'list' }];
    else if (command === 'call' && (rest.length === 1 || rest.length === 2)) {
        let args;
        if (rest.length === 2) {
            try {
                args = JSON.parse(rest[1]);
            } catch (e) {
                usage(`ARGS_JSON is not JSON: ${e.message}`);
            }
            if (args === null || typeof args !== 'object' || Array.isArray(args)) usage('ARGS_JSON must be a JSON object');
        }
        opts.ops = [{ op: 'call', name: rest[0], arguments: args }];
    } else if (command === 'script' && rest.length === 0) opts.ops = null;
    else usage('expected list, call NAME [ARGS_JSON] or script');
    return opts;
}

function validateOps(ops) {
    if (!Array.isArray(ops) || !ops.every(op => op && typeof op === 'object' && !Array.isArray(op))) {
        throw new Error('script must be a JSON array of objects');
    }
    for (const op of ops) {
        if (op.op === 'call') {
            if (typeof op.name !== 'string') throw new Error(`call op needs a string name: ${JSON.stringify(op)}`);
            if (op.arguments != null && (typeof op.arguments !== 'object' || Array.isArray(op.arguments))) {
                throw new Error(`call op arguments must be an object: ${JSON.stringify(op)}`);
            }
        } else if (op.op !== 'list' && op.op !== 'sleep') throw new Error(`unknown op: ${JSON.stringify(op)}`);
    }
    return ops;
}

async function readStdin() {
    const chunks = [];
    for await (const chunk of process.stdin) chunks.push(chunk);
    return Buffer.concat(chunks).toString('utf8');
}

class TransportFailure extends Error {
    constructor(message, httpStatus, options) {
        super(message, options);
        this.httpStatus = httpStatus;
    }

    output() {
        const out = { ok: false, transport_error: this.message };
        if (this.httpStatus !== undefined) out.http_status = this.httpStatus;
        return out;
    }
}

// Remembers the HTTP status of the last POST per JSON-RPC method.
const statuses = new Map();

async function recordingFetch(url, init) {
    const response = await fetch(url, init);
    if ((init?.method ?? 'GET') === 'POST' && typeof init.body === 'string') {
        try {
            const method = JSON.parse(init.body).method;
            if (typeof method === 'string') statuses.set(method, response.status);
        } catch {
            // not JSON: nothing to remember
        }
    }
    return response;
}

// The JSON-RPC error an HTTP error response carried, if its body was one (StreamableHTTPError keeps the body text).
function jsonRpcErrorIn(error) {
    const marker = 'Error POSTing to endpoint: ';
    const at = error.message.indexOf(marker);
    const text = at >= 0 ? error.message.slice(at + marker.length) : error.message;
    try {
        const body = JSON.parse(text);
        if (body && typeof body === 'object' && body.error && typeof body.error.code === 'number') return body.error;
    } catch {
        // not JSON
    }
    return null;
}

function describe(error) {
    let e = error;
    while (e && e.cause && !(e instanceof McpError)) e = e.cause;
    return `${e?.name ?? 'Error'}: ${e?.message ?? String(e)}`;
}

// MCP errors the SDK makes up itself when no answer arrives.
function synthesized(error) {
    return (
        (error.code === -32001 && /^MCP error -32001: Request timed out/.test(error.message)) ||
        (error.code === -32000 && /^MCP error -32000: Connection closed/.test(error.message))
    );
}

let anyError = false;

// Output object for an error thrown by an operation of JSON-RPC method `method`, or throw TransportFailure.
function errorOutput(error, method) {
    const status = statuses.get(method);
    const withStatus = obj => (status === undefined ? obj : { ...obj, http_status: status });
    if (error instanceof McpError && !synthesized(error)) {
        anyError = true;
        const prefix = `MCP error ${error.code}: `;
        const message = error.message.startsWith(prefix) ? error.message.slice(prefix.length) : error.message;
        return withStatus({ ok: false, error: { code: error.code, message, data: error.data ?? null } });
    }
    // An HTTP error status: the SDK throws with the body text in the message, JSON-RPC error or not.
    if (error instanceof StreamableHTTPError || /Error POSTing to endpoint: /.test(error?.message ?? '')) {
        const rpc = jsonRpcErrorIn(error);
        if (rpc) {
            anyError = true;
            return withStatus({ ok: false, error: { code: rpc.code, message: rpc.message, data: rpc.data ?? null } });
        }
    }
    throw new TransportFailure(error instanceof McpError ? error.message : describe(error), status, { cause: error });
}

async function listTools(client, opts) {
    const names = [];
    let cursor;
    let pages = 0;
    do {
        const page = await client.listTools(cursor === undefined ? {} : { cursor }, { timeout: opts.timeout * 1000 });
        pages += 1;
        for (const tool of page.tools) names.push(tool.name);
        cursor = page.nextCursor;
    } while (cursor !== undefined && cursor !== null && pages < MAX_PAGES);
    return { ok: true, tools: names, pages };
}

async function callTool(client, opts, name, args) {
    let progress = 0;
    const options = { timeout: opts.timeout * 1000 };
    if (opts.progress) {
        options.onprogress = () => {
            progress += 1;
        };
    }
    const params = args === undefined || args === null ? { name } : { name, arguments: args };
    const result = await client.callTool(params, undefined, options);
    const text = (result.content ?? [])
        .filter(block => block.type === 'text')
        .map(block => block.text)
        .join('');
    return { ok: true, isError: Boolean(result.isError), text, structured: result.structuredContent ?? null, progress };
}

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    let ops = opts.ops;
    if (ops === null) {
        try {
            ops = validateOps(JSON.parse(await readStdin()));
        } catch (e) {
            emit({ ok: false, usage_error: e.message });
            return 2;
        }
    }

    const headers = Object.fromEntries(opts.headers);
    const url = new URL(opts.url);
    const transport =
        opts.transport === 'sse'
            ? new SSEClientTransport(url, { requestInit: { headers }, fetch: recordingFetch })
            : new StreamableHTTPClientTransport(url, { requestInit: { headers }, fetch: recordingFetch });
    const client = new Client({ name: 'stoa-test-client-node', version: '1.0.0' }, { capabilities: {} });
    // Transport-level errors also reach the pending request as a rejection; nothing to do here.
    client.onerror = () => {};

    try {
        await client.connect(transport, { timeout: opts.timeout * 1000 });
    } catch (error) {
        try {
            const out = errorOutput(error, 'initialize');
            emit({ ...out, phase: 'connect' });
            return 1;
        } catch (failure) {
            emit({ ...failure.output(), phase: 'connect' });
            return 3;
        } finally {
            await client.close().catch(() => {});
        }
    }

    let status = 0;
    try {
        for (const spec of ops) {
            statuses.clear();
            let out;
            try {
                if (spec.op === 'list') out = await listTools(client, opts);
                else if (spec.op === 'call') out = await callTool(client, opts, spec.name, spec.arguments);
                else {
                    await new Promise(resolve => setTimeout(resolve, Number(spec.seconds ?? 0) * 1000));
                    out = { ok: true, slept: spec.seconds ?? 0 };
                }
            } catch (error) {
                try {
                    out = errorOutput(error, spec.op === 'list' ? 'tools/list' : 'tools/call');
                } catch (failure) {
                    emit(failure.output());
                    status = 3;
                    return status;
                }
            }
            emit(out);
        }
        status = anyError ? 1 : 0;
        return status;
    } finally {
        if (transport instanceof StreamableHTTPClientTransport && transport.sessionId !== undefined && status !== 3) {
            await transport.terminateSession().catch(() => {});
        }
        await client.close().catch(() => {});
    }
}

// Exit only once stdout has taken everything (a pipe may still hold a large result).
function exitAfterFlush(code) {
    process.stdout.write('', () => process.exit(code));
}

main().then(exitAfterFlush, error => {
    emit({ ok: false, transport_error: describe(error) });
    exitAfterFlush(3);
});
