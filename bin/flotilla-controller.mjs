#!/usr/bin/env node
// The `flotilla-controller` daemon.
import { load } from './runtime.mjs';

const { main } = await load('services/controller/main');
const code = await main(process.argv.slice(2));
// A daemon's main may resolve with an exit code once it has shut down.
if (typeof code === 'number') process.exitCode = code;
