import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { packageRoot } from "../../common/package-root.js";

export interface StaticAsset {
  readonly contentType: string;
  readonly body: Buffer;
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
};

/** A file name of the page: one folder level at most, no dot segments, a known extension. */
const NAME = /^\/(?:[a-z0-9-]+\/)?[a-z0-9-]+\.(html|js|css|svg)$/;

const cache = new Map<string, StaticAsset>();

/**
 * One file of the web page (services/controller/web/, committed as plain
 * ES modules, HTML and CSS: no build step), or undefined when there is no
 * such file. Read once, then served from memory.
 */
export async function staticAsset(path: string): Promise<StaticAsset | undefined> {
  const m = NAME.exec(path);
  if (!m) return undefined;
  const hit = cache.get(path);
  if (hit) return hit;
  let body: Buffer;
  try {
    body = await readFile(join(packageRoot(), "services", "controller", "web", path.slice(1)));
  } catch {
    return undefined;
  }
  const asset = { contentType: TYPES[`.${m[1]!}`]!, body };
  cache.set(path, asset);
  return asset;
}
