// Runs Python on the official MicroPython WebAssembly VM for fleetpin (driven by fleetpin/mpvm.py).
//
// Protocol: the first line of stdin is a JSON request
//   {"vm": "<path to micropython.mjs>", "heapsize": <bytes>,
//    "files": {"/abs/path": "<base64>", ...},      // written into the VM's in-memory FS
//    "steps": ["<python source>", ...],               // each run as its own top-level call
//    "stream": null | {"handler": "<name of a Python callable in __main__>"}}
// Run mode (stream null): one JSON line on stdout when done:
//   {"load_ms", "heap_initial", "heap_limit", "steps": [{"stdout": b64, "error": str|null,
//    "ms", "heap_total", "heap_used"}]}
// Steps stop at the first uncaught Python exception (its traceback text is "error").
// Stream mode (the extension point for a virtual board's serial line): after the steps, every
// chunk read from stdin is passed as bytes to the handler; the bytes it returns go to stdout.
// The VM's own prints go to stderr in this mode.  Setup errors end the process with code 3.
//
// Why steps: this build never collects garbage inside a call (gc.collect() only schedules a
// collection, run when JS next calls into Python), so separate calls are the only points where
// the heap is collected and live memory can be measured.
import fs from "fs";

function readRequestLine() {
  // Synchronous read up to the first newline; the rest of stdin belongs to stream mode.
  const chunks = [];
  const buf = Buffer.alloc(65536);
  for (;;) {
    let n;
    try {
      n = fs.readSync(0, buf, 0, buf.length, null);
    } catch (e) {
      if (e.code === "EAGAIN") continue;
      throw e;
    }
    if (n === 0) break;
    const part = Buffer.from(buf.subarray(0, n));
    const nl = part.indexOf(10);
    if (nl >= 0) {
      chunks.push(part.subarray(0, nl));
      return [Buffer.concat(chunks).toString("utf8"), part.subarray(nl + 1)];
    }
    chunks.push(part);
  }
  return [Buffer.concat(chunks).toString("utf8"), Buffer.alloc(0)];
}

function fail(message) {
  process.stderr.write("runner: " + message + "\n");
  process.exit(3);
}
// Node's default report of an uncaught error prints the (minified, 100 KB) line of the VM's source.
process.on("uncaughtException", (e) => fail("uncaught: " + (e && e.stack ? e.stack.split("\n").slice(0, 6).join("\n") : e)));
process.on("unhandledRejection", (e) => fail("unhandled rejection: " + (e && e.message || e)));

const [line, leftover] = readRequestLine();
let req;
try {
  req = JSON.parse(line);
} catch (e) {
  fail("bad request line: " + e.message);
}

const { loadMicroPython } = await import(req.vm);
let sink = [];  // VM stdout bytes, swapped while measuring the heap
let probing = false;  // in stream mode, keep the heap probe's output off stderr
const streaming = !!req.stream;
const t0 = performance.now();
const mp = await loadMicroPython({
  heapsize: req.heapsize,
  linebuffer: false,
  stdout: (b) => (streaming && !probing ? process.stderr.write(b) : sink.push(b[0])),
});
const loadMs = performance.now() - t0;

// The "GC: total: N, used: M" line of micropython.mem_info().  The probe is two calls: the first
// schedules a collection, the second runs it on entry, so "used" is live memory only.
function heap() {
  const saved = sink;
  sink = [];
  probing = true;
  try {
    mp.runPython("__import__('gc').collect()");
    mp.runPython("__import__('micropython').mem_info()");
    const text = Buffer.from(sink).toString("utf8");
    const m = /GC: total: (\d+), used: (\d+)/.exec(text);
    if (!m) fail("no GC line in mem_info output: " + text);
    return { total: Number(m[1]), used: Number(m[2]) };
  } finally {
    sink = saved;
    probing = false;
  }
}

function mkdirs(path) {
  const parts = path.split("/").slice(1, -1);
  let dir = "";
  for (const p of parts) {
    dir += "/" + p;
    try { mp.FS.mkdir(dir); } catch (e) { /* exists */ }
  }
}

try {
  for (const [path, b64] of Object.entries(req.files || {})) {
    mkdirs(path);
    mp.FS.writeFile(path, Buffer.from(b64, "base64"));
  }
} catch (e) {
  fail("writing files into the VM: " + e.message);
}

const initial = heap();
const results = [];
for (const src of req.steps || []) {
  sink = [];
  let error = null;
  const t = performance.now();
  try {
    mp.runPython(src);
  } catch (e) {
    // PythonError carries the VM's traceback; anything else is a VM crash (e.g. wasm abort).
    error = e && e.name === "PythonError" ? String(e.message) : "VM crashed: " + String(e && e.message || e);
  }
  const ms = performance.now() - t;
  const out = Buffer.from(sink).toString("base64");
  const h = error && error.startsWith("VM crashed") ? { total: -1, used: -1 } : heap();
  results.push({ stdout: out, error, ms, heap_total: h.total, heap_used: h.used });
  if (error !== null) break;
}

if (!streaming) {
  // Exit only once the reply is flushed: on a pipe, stdout is asynchronous, and process.exit()
  // right after write() drops whatever the pipe has not taken yet (all but the first 64 KB).
  process.stdout.write(JSON.stringify({
    load_ms: loadMs, heap_initial: initial.total, heap_used_initial: initial.used, steps: results,
  }) + "\n", () => process.exit(0));
} else {
  serveStream();
}

// Stream mode: setup steps must have succeeded.
function serveStream() {
  const bad = results.find((r) => r.error !== null);
  if (bad) fail("stream setup failed:\n" + bad.error);
  mp.runPython(
    "def _fp_feed(data):\n" +
    "    out = " + req.stream.handler + "(bytes(data))\n" +
    "    return list(out) if out else None\n");
  const feed = mp.globals.get("_fp_feed");
  function onData(chunk) {
    if (chunk.length === 0) return;
    let out;
    try {
      // each call enters the VM at top level, so garbage is collected first, as between UART reads
      out = feed(new Uint8Array(chunk));
      if (out) out = Buffer.from(mp.PyProxy.toJs(out));
    } catch (e) {
      fail("stream handler raised:\n" + (e && e.message || e));
    }
    if (out) process.stdout.write(out);
  }
  onData(leftover);
  process.stdin.on("data", onData);
  process.stdin.on("end", () => process.exit(0));
}
