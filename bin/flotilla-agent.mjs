#!/usr/bin/env node
// The `flotilla-agent` daemon: loads the TypeScript sources through tsx and runs main().
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../services/agent/main.ts');
const code = await main(process.argv.slice(2));
// A daemon's main may resolve with an exit code once it has shut down.
if (typeof code === 'number') process.exitCode = code;
