// Chooses how the bins load Flotilla: the compiled JavaScript in dist/ when it
// is present and newer than every source file (npm run build), otherwise the
// TypeScript sources through tsx. Set FLOTILLA_RUNTIME=source to force tsx.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function newestSource(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(p));
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

/** Imports services/<rel>.ts, compiled or through tsx. */
export async function load(rel) {
  const stamp = join(root, 'dist', '.stamp');
  const compiled = join(root, 'dist', `${rel}.js`);
  const useDist = process.env.FLOTILLA_RUNTIME !== 'source' && existsSync(stamp) && existsSync(compiled) &&
    (!existsSync(join(root, 'services')) || statSync(stamp).mtimeMs >= newestSource(join(root, 'services')));
  if (useDist) return import(pathToFileURL(compiled).href);
  const { register } = await import('tsx/esm/api');
  register();
  return import(pathToFileURL(join(root, `${rel}.ts`)).href);
}
