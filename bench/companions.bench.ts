/**
 * Companion files benchmark (P12): backing up a 200 MB `uploads/` folder
 * (200 files of 1 MB, random bytes) with the agent's companion-files adapter,
 * the way every backup of a target with `backups.include` does it: snapshot
 * plus the backup-time verification.
 *
 *   P12  second backup with nothing changed (hard links to the first) ÷ the
 *        first backup (a full copy with sha256), medians of 3 pairs; goal ≤ 0.1
 *
 * `--quick` uses 40 MB. Everything lives in a temp directory
 * (FLOTILLA_BENCH_DIR to choose where) removed afterwards.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { snapshotCompanions, verifyCompanions, type CompanionEntry } from "../services/agent/adapters/companion-files.js";
import { detailFigure, median, ratioFigure, type BenchOptions, type Figure } from "./figure.js";

const PAIRS = 3;

async function timedBackup(
  uploads: string,
  destDir: string,
  previous?: { dir: string; entries: CompanionEntry[] },
): Promise<{ ms: number; entries: CompanionEntry[]; copied: number }> {
  const start = performance.now();
  const snap = await snapshotCompanions({ include: [uploads], destDir, exclude: [], onProgress: () => undefined, ...(previous ? { previous } : {}) });
  const v = await verifyCompanions(destDir, snap.entries, { full: false });
  if (!v.ok) throw new Error(`companion verification failed in the benchmark: ${v.detail}`);
  return { ms: performance.now() - start, entries: snap.entries, copied: snap.copiedFiles };
}

export async function measure(opts: Pick<BenchOptions, "quick"> & Partial<Pick<BenchOptions, "log">>): Promise<Figure[]> {
  const log = opts.log ?? (() => undefined);
  const mb = opts.quick ? 40 : 200;
  const root = fs.mkdtempSync(path.join(process.env.FLOTILLA_BENCH_DIR ?? os.tmpdir(), "flotilla-bench-companions-"));
  try {
    const uploads = path.join(root, "uploads");
    fs.mkdirSync(uploads);
    log(`companions: writing a ${mb} MB uploads/ folder (${mb} files of 1 MB)`);
    for (let i = 0; i < mb; i++) fs.writeFileSync(path.join(uploads, `upload-${String(i).padStart(4, "0")}.bin`), randomBytes(1024 * 1024));
    const first: number[] = [];
    const second: number[] = [];
    for (let pair = 0; pair < PAIRS; pair++) {
      const backups = path.join(root, `backups-${pair}`);
      fs.mkdirSync(backups);
      const one = await timedBackup(uploads, path.join(backups, "one.files"));
      const two = await timedBackup(uploads, path.join(backups, "two.files"), { dir: path.join(backups, "one.files"), entries: one.entries });
      if (two.copied !== 0) throw new Error(`the unchanged second backup copied ${two.copied} file(s)`);
      first.push(one.ms);
      second.push(two.ms);
      fs.rmSync(backups, { recursive: true, force: true });
    }
    const a = median(first);
    const b = median(second);
    return [
      ratioFigure(
        "P12",
        `second backup with an unchanged ${mb} MB companion folder ÷ the first`,
        b,
        a,
        "ms",
        `companion snapshot + backup-time verification; first: full copy with sha256; second: hard links to the first; medians of ${PAIRS} pairs`,
      ),
      detailFigure("companions: first backup throughput", (mb * 1024 * 1024) / 1e6 / (a / 1000), "MB/s"),
    ];
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const figures = await measure({ quick: process.argv.includes("--quick"), log: (l) => process.stderr.write(`${l}\n`) });
  process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
}
