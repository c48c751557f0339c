import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface HealthEndpoints {
  /** Ready to take operations (listening, not draining). */
  readonly ready: () => boolean;
  readonly metrics: { text(): Promise<string>; contentType: string };
}

/**
 * The agent's small HTTP listener: `GET /healthz` (the process answers),
 * `GET /readyz` (200 while serving, 503 while starting or draining) and
 * `GET /metrics` (Prometheus text). Nothing else; it changes nothing and
 * reveals no secret, so it takes no token (keep it on loopback or the pod network).
 */
export async function startHealthListener(address: string, endpoints: HealthEndpoints): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" }).end("method not allowed\n");
      return;
    }
    if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
      return;
    }
    if (path === "/readyz") {
      const ready = endpoints.ready();
      res.writeHead(ready ? 200 : 503, { "content-type": "text/plain" }).end(ready ? "ready\n" : "not ready\n");
      return;
    }
    if (path === "/metrics") {
      endpoints.metrics.text().then(
        (text) => res.writeHead(200, { "content-type": endpoints.metrics.contentType }).end(text),
        () => res.writeHead(500, { "content-type": "text/plain" }).end("metrics unavailable\n"),
      );
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" }).end("not found: /healthz, /readyz, /metrics\n");
  });
  const host = address.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  const port = Number(address.split(":").at(-1));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return { server, port: (server.address() as AddressInfo).port };
}
