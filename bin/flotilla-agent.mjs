#!/usr/bin/env node
// The `flotilla-agent` daemon.
import { setFlagsFromString } from 'node:v8';
import { load } from './runtime.mjs';

// The agent idles most of its life and moves bulk data in worker threads and child
// processes, never on this heap: a 1 MiB young generation (instead of V8's 16 MiB default)
// keeps its idle footprint small at no cost that shows (set before anything allocates much).
setFlagsFromString('--max-semi-space-size=1');

const { main } = await load('services/agent/main');
const code = await main(process.argv.slice(2));
// A daemon's main may resolve with an exit code once it has shut down.
if (typeof code === 'number') process.exitCode = code;
