#!/usr/bin/env node
// The `flotilla-agent` daemon.
import { setFlagsFromString } from 'node:v8';
import { load } from './runtime.mjs';

// The agent idles most of its life and moves most bulk data in worker threads and child
// processes, off this heap. Its idle footprint (bench P9) is set here, before anything
// allocates much. Each flag below is one V8 reads while it runs, measured with
// `npm run bench -- --quick agent-footprint`:
//
// - A 1 MiB young generation instead of 8 MiB semi-spaces (about -7 MiB). The heap's limits
//   are fixed when the isolate is made, so `--max-semi-space-size=1` set here did nothing
//   (measured: 16 MiB new space); a growth factor of 1 keeps the young generation at the
//   1 MiB semi-spaces it starts with.
// - No optimizing compiler (about -5 MiB) and no baseline compiler (about -0.8 MiB) while
//   starting: start-up code runs once (module loading, descriptor decoding, config parsing)
//   and compiling it further only maps the compilers in and keeps code nobody runs again.
//   Both are turned back on once the agent listens, so operations (a move's row copy) run
//   optimized as before (start-up CPU time did not change measurably: 350-420 ms either way).
setFlagsFromString('--semi-space-growth-factor=1');
setFlagsFromString('--no-opt');
setFlagsFromString('--no-sparkplug');

let code;
try {
  const { main } = await load('services/agent/main');
  code = await main(process.argv.slice(2));
} finally {
  setFlagsFromString('--opt');
  setFlagsFromString('--sparkplug');
}
// A daemon's main may resolve with an exit code once it has shut down.
if (typeof code === 'number') process.exitCode = code;
