#!/usr/bin/env node
// The `flotilla` CLI.
import { load } from './runtime.mjs';

const { main } = await load('services/cli/main');
const code = await main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, env: process.env });
process.exitCode = code;
