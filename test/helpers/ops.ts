/** Helpers for driving agent operations over real gRPC in tests. */
import type { MessageShape } from "@bufbuild/protobuf";
import type { OperationEventSchema, OperationResultSchema } from "../../services/common/gen/flotilla/v1/agent_pb.js";

export type OpResult = MessageShape<typeof OperationResultSchema>;

export interface Collected {
  result: OpResult;
  lines: string[];
  steps: { name: string; state: string; detail: string }[];
  /** Progress events that carry Alembic revision progress (revision n/N). */
  revisionProgress: { index: number; count: number; revision: string; elapsedMs: number; etaMs: number }[];
}

/** Drains an operation stream; `onLine` sees each progress line as it arrives. */
export async function collect(stream: AsyncIterable<MessageShape<typeof OperationEventSchema>>, onLine?: (line: string) => void): Promise<Collected> {
  const lines: string[] = [];
  const steps: Collected["steps"] = [];
  const revisionProgress: Collected["revisionProgress"] = [];
  let result: OpResult | undefined;
  for await (const ev of stream) {
    if (ev.event.case === "progress") {
      lines.push(ev.event.value.line);
      onLine?.(ev.event.value.line);
      const p = ev.event.value;
      if (p.revisionCount > 0)
        revisionProgress.push({ index: p.revisionIndex, count: p.revisionCount, revision: p.revision, elapsedMs: Number(p.elapsedMs), etaMs: Number(p.etaMs) });
    } else if (ev.event.case === "step") steps.push({ name: ev.event.value.name, state: ev.event.value.state, detail: ev.event.value.detail });
    else if (ev.event.case === "result") result = ev.event.value;
  }
  if (!result) throw new Error("operation stream ended without a result");
  return { result, lines, steps, revisionProgress };
}
