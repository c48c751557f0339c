#!/usr/bin/env node
// The `flotilla` CLI: loads the TypeScript sources through tsx and runs main().
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../services/cli/main.ts');
const code = await main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, env: process.env });
process.exitCode = code;
