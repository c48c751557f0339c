/**
 * A small POSIX ustar writer for in-memory text files, gzipped with node:zlib.
 * Enough for the diagnostics bundle (a few dozen small files); it writes
 * regular files only, names up to 255 bytes (prefix + name), no links.
 * Written here rather than taken from a package: ~60 lines with no
 * dependency, and the bundle never needs reading, streaming or long names.
 */
import { gzipSync } from "node:zlib";

export interface TarFile {
  /** Relative path with "/" separators. */
  readonly name: string;
  readonly data: Buffer | string;
  readonly mode?: number;
}

const BLOCK = 512;

function octal(n: number, width: number): string {
  return `${n.toString(8).padStart(width - 1, "0")}\0`;
}

function splitName(name: string): { prefix: string; base: string } {
  if (Buffer.byteLength(name) <= 100) return { prefix: "", base: name };
  const cut = name.lastIndexOf("/", 155);
  const prefix = name.slice(0, cut);
  const base = name.slice(cut + 1);
  if (cut <= 0 || Buffer.byteLength(prefix) > 155 || Buffer.byteLength(base) > 100) throw new Error(`tar: name too long: ${name}`);
  return { prefix, base };
}

function header(name: string, size: number, mode: number, mtime: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  const { prefix, base } = splitName(name);
  h.write(base, 0, 100, "utf8");
  h.write(octal(mode, 8), 100, "ascii");
  h.write(octal(0, 8), 108, "ascii");
  h.write(octal(0, 8), 116, "ascii");
  h.write(octal(size, 12), 124, "ascii");
  h.write(octal(mtime, 12), 136, "ascii");
  h.write("        ", 148, "ascii");
  h.write("0", 156, "ascii");
  h.write("ustar\0", 257, "ascii");
  h.write("00", 263, "ascii");
  h.write(prefix, 345, 155, "utf8");
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
  return h;
}

/** A ustar archive of the files (mtime `mtimeSec` on all). */
export function tar(files: readonly TarFile[], mtimeSec = Math.floor(Date.now() / 1000)): Buffer {
  const parts: Buffer[] = [];
  for (const f of files) {
    const data = typeof f.data === "string" ? Buffer.from(f.data, "utf8") : f.data;
    parts.push(header(f.name, data.length, f.mode ?? 0o644, mtimeSec), data);
    const pad = (BLOCK - (data.length % BLOCK)) % BLOCK;
    if (pad > 0) parts.push(Buffer.alloc(pad));
  }
  parts.push(Buffer.alloc(BLOCK * 2));
  return Buffer.concat(parts);
}

/** tar + gzip. */
export function tarGz(files: readonly TarFile[], mtimeSec?: number): Buffer {
  return gzipSync(tar(files, mtimeSec));
}
