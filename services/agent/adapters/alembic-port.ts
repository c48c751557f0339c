import type { ProcessRunner } from "../../common/process-runner.js";
import type { AlembicPort } from "../core/ports.js";
import { AlembicCli, type AlembicTarget } from "./alembic-cli.js";

/** The AlembicPort of one target database: its Alembic CLI with a migration deadline. */
export function alembicPort(target: AlembicTarget, runner: ProcessRunner, migrationTimeoutMs: number): AlembicPort {
  return new AlembicCli(target, runner, { migrationTimeoutMs });
}
