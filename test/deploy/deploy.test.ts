/**
 * Checks the deploy/ folder: every YAML file parses; the Kubernetes manifests are hardened and
 * consistent (Secrets, ConfigMaps, volumes and Services they reference exist); the systemd
 * units carry the hardening settings; the polkit rule grants exactly stop/start of Open WebUI;
 * and every config (examples, ConfigMaps, compose) loads with the REAL agent and controller
 * loaders, reading its secrets from paths the deployment actually mounts.
 */
import assert from "node:assert/strict";
import { readFileSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import vm from "node:vm";
import { test } from "node:test";
import { isMap, parseAllDocuments } from "yaml";
import { loadAgentConfig, type AgentConfig, type AgentTarget } from "../../services/agent/config.js";
import { NodeSecretSource } from "../../services/agent/adapters/secret-source.js";
import { resolveSecrets } from "../../services/agent/core/secrets.js";
import { resolvedTarget } from "../../services/agent/target-registry.js";
import { loadControllerConfig, type ControllerConfig } from "../../services/controller/config.js";
import { parseCommandLine } from "../../services/cli/args.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const DEPLOY = path.join(ROOT, "deploy");

// ------------------------------------------------------------------------------- small helpers

type J = Record<string, unknown>;

function obj(v: unknown, what: string): J {
  assert.ok(v !== null && typeof v === "object" && !Array.isArray(v), `${what} must be a mapping, got ${JSON.stringify(v)}`);
  return v as J;
}

function list(v: unknown, what: string): unknown[] {
  assert.ok(Array.isArray(v), `${what} must be a list, got ${JSON.stringify(v)}`);
  return v;
}

function str(v: unknown, what: string): string {
  assert.equal(typeof v, "string", `${what} must be a string, got ${JSON.stringify(v)}`);
  return v as string;
}

function optList(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else out.push(p);
  }
  return out;
}

const rel = (p: string): string => path.relative(ROOT, p);

/** Parses every document of a YAML file; each must be error- and warning-free and a mapping. */
function yamlDocs(file: string): J[] {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  assert.ok(docs.length > 0, `${rel(file)} holds no YAML document`);
  return docs.map((d, i) => {
    assert.deepEqual(
      d.errors.map((e) => e.message),
      [],
      `${rel(file)} document ${i} has errors`,
    );
    assert.deepEqual(
      d.warnings.map((e) => e.message),
      [],
      `${rel(file)} document ${i} has warnings`,
    );
    assert.ok(isMap(d.contents), `${rel(file)} document ${i} is not a mapping`);
    return obj(d.toJS(), `${rel(file)} document ${i}`);
  });
}

const SECRET_ROOT = /^\/(etc\/flotilla|run\/secrets)\//;
const FAKE_SECRET = "x".repeat(32);
const under = (p: string, dir: string): boolean => p === dir || p.startsWith(dir.endsWith("/") ? dir : `${dir}/`);

/**
 * A readFile for the loaders: the config itself from `text`, a fake secret for any path under
 * /etc/flotilla or /run/secrets (so the loaders' secret checks run), ENOENT for anything else.
 * Records every secret path read.
 */
function fakeFiles(configPath: string, text: string): { readFile: (p: string) => string; reads: string[] } {
  const reads: string[] = [];
  const readFile = (p: string): string => {
    if (p === configPath) return text;
    reads.push(p);
    if (SECRET_ROOT.test(p)) return FAKE_SECRET;
    throw Object.assign(new Error(`ENOENT: no such file or directory, open '${p}'`), { code: "ENOENT" });
  };
  return { readFile, reads };
}

interface Loaded<T> {
  readonly config: T;
  /** Secret files the loader (controller) or the agent's per-operation resolver read (tokens, passwords, env files). */
  readonly reads: readonly string[];
}

interface LoadedAgent extends Loaded<AgentConfig> {
  /** Each target as an operation sees it: secrets read through the agent's own resolver. */
  readonly resolved: readonly AgentTarget[];
}

function loadAgent(configPath: string, text: string, env: Record<string, string> = {}): LoadedAgent {
  const f = fakeFiles(configPath, text);
  const config = loadAgentConfig({ argv: ["--config", configPath], env, readFile: f.readFile, hostname: "test-host" });
  const source = new NodeSecretSource(env, f.readFile);
  const resolved = config.targets.map((t) => resolvedTarget(t, resolveSecrets(t, source)));
  return { config, reads: f.reads, resolved };
}

function loadController(configPath: string, text: string, env: Record<string, string> = {}): Loaded<ControllerConfig> {
  const f = fakeFiles(configPath, text);
  const config = loadControllerConfig({ argv: ["--config", configPath], env, readFile: f.readFile });
  return { config, reads: f.reads };
}

function sqliteFile(url: string): string | undefined {
  return url.startsWith("sqlite:///") ? url.slice("sqlite:///".length) : undefined;
}

/** Every file path an agent config makes the agent read or write, by purpose. */
function agentPaths(c: AgentConfig): { secrets: string[]; writable: string[] } {
  const secrets = c.tls ? [c.tls.cert, c.tls.key, c.tls.ca] : [];
  const writable = [c.dataDir];
  for (const t of c.targets) {
    writable.push(t.backups.dir);
    const db = sqliteFile(t.database);
    if (db) writable.push(path.dirname(db));
    const green = t.blueGreen ? sqliteFile(t.blueGreen.green) : undefined;
    if (green) writable.push(path.dirname(green));
  }
  return { secrets, writable };
}

/** Rules every agent config in deploy/ follows, whatever the deployment. */
function assertAgentConventions(where: string, l: LoadedAgent): void {
  const c = l.config;
  assert.ok(l.reads.length > 0, `${where}: reads no secret file (WEBUI_SECRET_KEY at least)`);
  for (const p of [...l.reads, ...agentPaths(c).secrets]) assert.match(p, SECRET_ROOT, `${where}: secret file ${p} is outside /etc/flotilla and /run/secrets`);
  const host = c.listen.replace(/:\d+$/, "");
  if (!["127.0.0.1", "localhost", "[::1]"].includes(host)) assert.ok(c.tls, `${where}: listens on ${host} without TLS`);
  for (const t of l.resolved) {
    // Open WebUI's env.py needs the key; importing open_webui must not migrate by itself.
    assert.equal(t.alembic.env.WEBUI_SECRET_KEY, FAKE_SECRET, `${where}: target ${t.id} has no WEBUI_SECRET_KEY from a file`);
    assert.ok(t.alembic.secretEnvNames.includes("WEBUI_SECRET_KEY"), `${where}: WEBUI_SECRET_KEY of ${t.id} is not marked secret`);
    assert.equal(t.alembic.env.ENABLE_DB_MIGRATIONS, "false", `${where}: target ${t.id} lets open_webui migrate on import`);
    if (t.kind === "postgresql") assert.equal(t.password, FAKE_SECRET, `${where}: PostgreSQL target ${t.id} has no passwordFile`);
    const db = sqliteFile(t.database);
    if (db) assert.ok(!under(t.backups.dir, path.dirname(db)), `${where}: backups of ${t.id} sit in the database's own folder`);
    assert.ok(t.labels.app, `${where}: target ${t.id} has no app label for selectors`);
  }
  for (const a of c.apps)
    assert.ok(
      c.targets.some((t) => t.id === a.target),
      `${where}: app ${a.id} names unknown target ${a.target}`,
    );
}

function assertControllerConventions(where: string, l: Loaded<ControllerConfig>): void {
  const c = l.config;
  for (const p of l.reads) assert.match(p, SECRET_ROOT, `${where}: secret file ${p} is outside /etc/flotilla and /run/secrets`);
  if (c.tls)
    for (const p of [c.tls.cert, c.tls.key, c.tls.ca]) assert.match(p, SECRET_ROOT, `${where}: TLS file ${p} is outside /etc/flotilla and /run/secrets`);
  // The audit log writes its checkpoint beside the key: it must live in the writable state folder.
  assert.ok(under(c.auditKeyFile, c.dataDir), `${where}: auditKeyFile ${c.auditKeyFile} is outside dataDir ${c.dataDir}`);
  const host = c.listen.http.replace(/:\d+$/, "");
  if (!["127.0.0.1", "localhost", "[::1]"].includes(host)) assert.ok(c.tokens.length > 0, `${where}: HTTP API on ${host} without tokens`);
  for (const t of c.tokens) assert.equal(t.value, FAKE_SECRET, `${where}: token ${t.name} not read from its file`);
  if (c.agents.some((a) => !a.address.startsWith("127.0.0.1:"))) assert.ok(c.tls, `${where}: remote agents without mTLS`);
}

// ------------------------------------------------------------------------------- all YAML

const EXPECTED_FILES = [
  "deploy/systemd/flotilla-agent.service",
  "deploy/systemd/flotilla-controller.service",
  "deploy/systemd/50-flotilla-open-webui.rules",
  "deploy/kubernetes/controller.yaml",
  "deploy/kubernetes/open-webui.yaml",
  "deploy/kubernetes/migration-job.yaml",
  "deploy/kubernetes/secrets.yaml",
  "deploy/compose/docker-compose.yml",
  "deploy/compose/agent.yaml",
  "deploy/compose/controller.yaml",
  "deploy/docker/Dockerfile",
  "deploy/examples/agent-sqlite.yaml",
  "deploy/examples/agent-postgres.yaml",
  "deploy/examples/agent-blue-green.yaml",
  "deploy/examples/controller.yaml",
  "deploy/examples/controller-postgres.yaml",
];

test("deploy/ holds the expected files and every YAML file parses into mappings", () => {
  const files = walk(DEPLOY).map(rel);
  for (const f of EXPECTED_FILES) assert.ok(files.includes(f), `${f} is missing`);
  const yamls = walk(DEPLOY).filter((f) => /\.ya?ml$/.test(f));
  assert.ok(yamls.length >= 11, `only ${yamls.length} YAML files found`);
  let docs = 0;
  for (const f of yamls) docs += yamlDocs(f).length;
  assert.ok(docs >= yamls.length + 10, `only ${docs} YAML documents`);
});

// ------------------------------------------------------------------------------- Kubernetes

interface K8sDoc {
  readonly file: string;
  readonly doc: J;
  readonly kind: string;
  readonly name: string;
}

function k8sDocs(): K8sDoc[] {
  const out: K8sDoc[] = [];
  for (const file of walk(path.join(DEPLOY, "kubernetes")).filter((f) => /\.ya?ml$/.test(f))) {
    for (const doc of yamlDocs(file)) {
      const where = `${rel(file)}`;
      str(doc.apiVersion, `${where}: apiVersion`);
      const kind = str(doc.kind, `${where}: kind`);
      const meta = obj(doc.metadata, `${where} ${kind}: metadata`);
      const name = str(meta.name, `${where} ${kind}: metadata.name`);
      assert.match(name, /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, `${where}: ${kind} name ${name} is not a DNS label`);
      assert.equal(meta.namespace, undefined, `${where}: ${kind}/${name} pins a namespace`);
      out.push({ file: rel(file), doc, kind, name });
    }
  }
  return out;
}

interface Container {
  readonly name: string;
  readonly image: string;
  readonly raw: J;
  readonly init: boolean;
}

interface Pod {
  readonly owner: K8sDoc;
  readonly spec: J;
  readonly containers: Container[];
  readonly volumes: Map<string, J>;
}

function podsOf(docs: readonly K8sDoc[]): Pod[] {
  const pods: Pod[] = [];
  for (const d of docs) {
    if (!["Deployment", "Job", "StatefulSet", "DaemonSet"].includes(d.kind)) continue;
    const spec = obj(obj(obj(d.doc.spec, `${d.name}.spec`).template, `${d.name}.spec.template`).spec, `${d.name} pod spec`);
    const containers: Container[] = [];
    for (const [field, init] of [
      ["initContainers", true],
      ["containers", false],
    ] as const) {
      for (const c of optList(spec[field])) {
        const raw = obj(c, `${d.name}.${field}[]`);
        containers.push({ name: str(raw.name, `${d.name} container name`), image: str(raw.image, `${d.name} container image`), raw, init });
      }
    }
    assert.ok(
      containers.some((c) => !c.init),
      `${d.kind}/${d.name} has no containers`,
    );
    const volumes = new Map<string, J>();
    for (const v of optList(spec.volumes)) {
      const vol = obj(v, `${d.name} volume`);
      volumes.set(str(vol.name, `${d.name} volume name`), vol);
    }
    pods.push({ owner: d, spec, containers, volumes });
  }
  return pods;
}

const isOpenWebUiImage = (image: string): boolean => image.startsWith("ghcr.io/open-webui/open-webui:");

function envOf(c: Container): J[] {
  return optList(c.raw.env).map((e) => obj(e, `${c.name} env`));
}

interface Mount {
  readonly mountPath: string;
  readonly readOnly: boolean;
  readonly subPath: string | undefined;
  readonly volume: J;
}

function mountsOf(pod: Pod, c: Container): Mount[] {
  return optList(c.raw.volumeMounts).map((m) => {
    const mount = obj(m, `${c.name} volumeMount`);
    const name = str(mount.name, `${c.name} volumeMount name`);
    const volume = pod.volumes.get(name);
    assert.ok(volume, `${pod.owner.name}/${c.name} mounts volume ${name}, which the pod does not declare`);
    return {
      mountPath: str(mount.mountPath, `${c.name} mountPath`),
      readOnly: mount.readOnly === true,
      subPath: typeof mount.subPath === "string" ? mount.subPath : undefined,
      volume,
    };
  });
}

function mountFor(mounts: readonly Mount[], p: string): Mount | undefined {
  return mounts.filter((m) => under(p, m.mountPath)).sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
}

/** The key of a configMap/secret volume that appears at `file` under `m`. */
function volumeKeyAt(m: Mount, file: string, source: J): string {
  const relPath = m.subPath ?? path.relative(m.mountPath, file);
  const items = optList(source.items).map((i) => obj(i, "volume item"));
  if (items.length === 0) return relPath;
  const item = items.find((i) => i.path === relPath);
  assert.ok(item, `no volume item maps to ${relPath}`);
  return str(item.key, "volume item key");
}

function secretValues(docs: readonly K8sDoc[]): Map<string, J> {
  const out = new Map<string, J>();
  for (const d of docs.filter((x) => x.kind === "Secret")) {
    out.set(d.name, { ...(d.doc.data as J | undefined), ...(d.doc.stringData as J | undefined) });
  }
  return out;
}

function configMaps(docs: readonly K8sDoc[]): Map<string, J> {
  const out = new Map<string, J>();
  for (const d of docs.filter((x) => x.kind === "ConfigMap")) out.set(d.name, obj(d.doc.data, `ConfigMap ${d.name} data`));
  return out;
}

test("kubernetes: every container is limited, unprivileged and non-root; Open WebUI never migrates itself", () => {
  const docs = k8sDocs();
  const pods = podsOf(docs);
  assert.deepEqual(pods.map((p) => `${p.owner.kind}/${p.owner.name}`).sort(), [
    "Deployment/flotilla-controller",
    "Deployment/open-webui",
    "Job/flotilla-migrate-open-webui",
  ]);
  let openWebUi = 0;
  for (const pod of pods) {
    const podSec = obj(pod.spec.securityContext ?? {}, `${pod.owner.name} pod securityContext`);
    assert.equal(pod.spec.automountServiceAccountToken, false, `${pod.owner.name}: needs no Kubernetes API token`);
    for (const c of pod.containers) {
      const where = `${pod.owner.kind}/${pod.owner.name} container ${c.name}`;
      const res = obj(c.raw.resources, `${where}: resources`);
      for (const k of ["requests", "limits"]) {
        const r = obj(res[k], `${where}: resources.${k}`);
        assert.ok(r.cpu !== undefined && r.memory !== undefined, `${where}: resources.${k} needs cpu and memory`);
      }
      const sec = obj(c.raw.securityContext, `${where}: securityContext`);
      assert.equal(sec.allowPrivilegeEscalation, false, `${where}: allowPrivilegeEscalation must be false`);
      assert.ok(
        list(obj(sec.capabilities, `${where}: capabilities`).drop, `${where}: capabilities.drop`).includes("ALL"),
        `${where}: must drop ALL capabilities`,
      );
      assert.equal(sec.runAsNonRoot ?? podSec.runAsNonRoot, true, `${where}: runAsNonRoot`);
      const uid = sec.runAsUser ?? podSec.runAsUser;
      assert.ok(typeof uid === "number" && uid > 0, `${where}: runs as a numeric non-root uid`);
      if (isOpenWebUiImage(c.image)) {
        openWebUi++;
        const flag = envOf(c).find((e) => e.name === "ENABLE_DB_MIGRATIONS");
        assert.equal(flag?.value, "false", `${where}: ENABLE_DB_MIGRATIONS must be "false"`);
      } else {
        // Flotilla's own containers need no writable root: /tmp and data are volumes.
        assert.equal(sec.readOnlyRootFilesystem, true, `${where}: readOnlyRootFilesystem`);
        if (!c.init)
          assert.ok(
            mountsOf(pod, c).some((m) => m.mountPath === "/tmp"),
            `${where}: tsx needs a writable /tmp`,
          );
      }
      mountsOf(pod, c);
    }
  }
  assert.equal(openWebUi, 1, "exactly one Open WebUI container");
});

test("kubernetes: every Secret, ConfigMap and key a pod references exists; Secrets are REPLACE_ME templates", () => {
  const docs = k8sDocs();
  const secrets = secretValues(docs);
  const cms = configMaps(docs);
  assert.ok(secrets.size >= 5, "Secrets for tokens, audit key, store, TLS and the app");
  for (const [name, values] of secrets) {
    assert.ok(Object.keys(values).length > 0, `Secret ${name} is empty`);
    for (const [k, v] of Object.entries(values)) {
      const s = str(v, `Secret ${name}.${k}`);
      assert.ok(
        s === "REPLACE_ME" || /^postgresql:\/\/[a-z_]+:REPLACE_ME@[a-z.-]+:\d+\/[a-z_]+$/.test(s),
        `Secret ${name}.${k} is not a REPLACE_ME placeholder: ${s}`,
      );
    }
  }
  const tls = [...secrets].filter(([n]) => n.endsWith("-tls"));
  assert.equal(tls.length, 2, "TLS Secrets for the controller and the agent");
  for (const [n, v] of tls) assert.deepEqual(Object.keys(v).sort(), ["ca.pem", "cert.pem", "key.pem"], `Secret ${n}`);
  assert.ok(
    [...secrets.values()].some((v) => "audit.key" in v),
    "a Secret holds the audit key",
  );

  for (const pod of podsOf(docs)) {
    for (const vol of pod.volumes.values()) {
      if (vol.secret !== undefined) {
        const s = obj(vol.secret, "secret volume");
        const name = str(s.secretName, "secretName");
        assert.ok(secrets.has(name), `${pod.owner.name}: volume uses unknown Secret ${name}`);
        for (const i of optList(s.items))
          assert.ok(str(obj(i, "item").key, "key") in secrets.get(name)!, `${pod.owner.name}: Secret ${name} has no key ${String(obj(i, "item").key)}`);
      }
      if (vol.configMap !== undefined) {
        const c = obj(vol.configMap, "configMap volume");
        const name = str(c.name, "configMap name");
        assert.ok(cms.has(name), `${pod.owner.name}: volume uses unknown ConfigMap ${name}`);
        for (const i of optList(c.items)) assert.ok(str(obj(i, "item").key, "key") in cms.get(name)!, `${pod.owner.name}: ConfigMap ${name} has no key`);
      }
      if (vol.persistentVolumeClaim !== undefined) {
        const claim = str(obj(vol.persistentVolumeClaim, "pvc").claimName, "claimName");
        assert.ok(
          docs.some((d) => d.kind === "PersistentVolumeClaim" && d.name === claim),
          `${pod.owner.name}: unknown PVC ${claim}`,
        );
      }
    }
    for (const c of pod.containers) {
      for (const e of envOf(c)) {
        if (e.valueFrom === undefined) continue;
        const ref = obj(obj(e.valueFrom, "valueFrom").secretKeyRef, `${c.name} env ${String(e.name)}: only secretKeyRef is used`);
        const name = str(ref.name, "secretKeyRef.name");
        assert.ok(
          secrets.get(name) && str(ref.key, "secretKeyRef.key") in secrets.get(name)!,
          `${pod.owner.name}/${c.name}: env ${String(e.name)} uses missing ${name}/${String(ref.key)}`,
        );
      }
    }
  }
});

test("kubernetes: controller runs two replicas only on the PostgreSQL store, ready only when leading (/readyz), alive on /healthz, and is reachable on 7440/7441", () => {
  const docs = k8sDocs();
  const secrets = secretValues(docs);
  const pod = podsOf(docs).find((p) => p.owner.name === "flotilla-controller");
  assert.ok(pod);
  const replicas = obj(pod.owner.doc.spec, "spec").replicas;
  const ctl = pod.containers.find((c) => !c.init && (c.raw.command as unknown[] | undefined)?.[0] === "flotilla-controller");
  assert.ok(ctl, "a container runs flotilla-controller");
  const store = envOf(ctl).find((e) => e.name === "FLOTILLA_STORE");
  if (typeof replicas === "number" && replicas > 1) {
    assert.ok(store, "several replicas need FLOTILLA_STORE");
    const ref = obj(obj(store.valueFrom, "FLOTILLA_STORE.valueFrom").secretKeyRef, "FLOTILLA_STORE from a Secret");
    const url = str(secrets.get(str(ref.name, "name"))?.[str(ref.key, "key")], "store URL template");
    assert.match(url, /^postgresql:\/\//, "several replicas need the PostgreSQL store");
  }
  assert.equal(replicas, 2);
  for (const [probe, path] of [
    ["readinessProbe", "/readyz"],
    ["livenessProbe", "/healthz"],
  ] as const) {
    const get = obj(obj(ctl.raw[probe], probe).httpGet, `${probe}.httpGet`);
    assert.equal(get.path, path, `${probe} on ${path}: only the leader is ready`);
    assert.equal(get.port, 7441);
  }
  const ports = optList(ctl.raw.ports).map((p) => obj(p, "port"));
  assert.deepEqual(
    ports.map((p) => [p.name, p.containerPort]),
    [
      ["grpc", 7440],
      ["http", 7441],
    ],
  );
  const svc = docs.find((d) => d.kind === "Service" && d.name === "flotilla-controller");
  assert.ok(svc, "Service flotilla-controller");
  const svcSpec = obj(svc.doc.spec, "service spec");
  assert.deepEqual(
    optList(svcSpec.ports).map((p) => [obj(p, "port").port, obj(p, "port").targetPort]),
    [
      [7440, "grpc"],
      [7441, "http"],
    ],
  );
  // The Service selects the controller's pods.
  const podLabels = obj(obj(obj(obj(pod.owner.doc.spec, "spec").template, "template").metadata, "metadata").labels, "pod labels");
  const selector = obj(svcSpec.selector, "service selector");
  assert.ok(Object.keys(selector).length > 0);
  for (const [k, v] of Object.entries(selector)) assert.equal(podLabels[k], v, `Service selector ${k}`);
});

test("kubernetes: the configs in the ConfigMaps load with the real loaders and match what the pods mount", () => {
  const docs = k8sDocs();
  const secrets = secretValues(docs);
  const cms = configMaps(docs);
  const pods = podsOf(docs);
  const services = docs.filter((d) => d.kind === "Service");
  const loadedKeys = new Set<string>();
  let agents = 0;
  let controllers = 0;

  for (const pod of pods) {
    for (const c of pod.containers) {
      const command = optList(c.raw.command).map((x) => str(x, "command"));
      const at = command.indexOf("--config");
      if (at < 0) continue;
      const where = `${pod.owner.name}/${c.name}`;
      const configPath = str(command[at + 1], `${where}: --config value`);
      assert.match(configPath, /^\/etc\/flotilla\/[a-z-]+\.yaml$/, `${where}: config path`);
      const mounts = mountsOf(pod, c);
      const m = mountFor(mounts, configPath);
      assert.ok(m && m.volume.configMap, `${where}: ${configPath} is not mounted from a ConfigMap`);
      const cmRef = obj(m.volume.configMap, "configMap");
      const cmName = str(cmRef.name, "configMap name");
      const key = volumeKeyAt(m, configPath, cmRef);
      const text = str(cms.get(cmName)?.[key], `${where}: ConfigMap ${cmName} key ${key}`);
      loadedKeys.add(`${cmName}/${key}`);

      const env: Record<string, string> = {};
      for (const e of envOf(c)) {
        if (typeof e.value === "string") env[str(e.name, "env name")] = e.value;
        else if (e.valueFrom !== undefined) {
          const ref = obj(obj(e.valueFrom, "valueFrom").secretKeyRef, "secretKeyRef");
          env[str(e.name, "env name")] = str(secrets.get(str(ref.name, "name"))?.[str(ref.key, "key")], "secret value");
        }
      }
      /** A secret file the config names must come from a Secret volume that has that key. */
      const assertSecretMounted = (p: string): void => {
        const sm = mountFor(mounts, p);
        assert.ok(sm && sm.volume.secret, `${where}: secret file ${p} is not on a Secret volume`);
        const s = obj(sm.volume.secret, "secret volume");
        const k = volumeKeyAt(sm, p, s);
        assert.ok(k in (secrets.get(str(s.secretName, "secretName")) ?? {}), `${where}: Secret ${String(s.secretName)} has no key ${k} for ${p}`);
      };
      const assertWritable = (p: string): void => {
        const wm = mountFor(mounts, p);
        assert.ok(wm && !wm.readOnly && !wm.volume.secret && !wm.volume.configMap, `${where}: ${p} must be on a writable volume`);
      };

      if (command[0] === "flotilla-agent") {
        agents++;
        const l = loadAgent(configPath, text, env);
        assertAgentConventions(where, l);
        const a = agentPaths(l.config);
        for (const p of [...l.reads, ...a.secrets]) assertSecretMounted(p);
        for (const p of a.writable) assertWritable(p);
        // The agent shares Open WebUI's data volume (SQLite): same claim, same path.
        const app = pod.containers.find((x) => isOpenWebUiImage(x.image));
        assert.ok(app, `${where}: the agent is a sidecar of Open WebUI`);
        for (const t of l.config.targets) {
          const db = sqliteFile(t.database);
          if (!db) continue;
          const mine = mountFor(mounts, db);
          const theirs = mountFor(mountsOf(pod, app), db);
          assert.ok(
            mine && theirs && mine.volume === theirs.volume && mine.mountPath === theirs.mountPath,
            `${where}: ${db} is not on the volume Open WebUI uses`,
          );
        }
        assert.equal(l.config.listen, "0.0.0.0:7443");
        assert.equal(l.config.targets.length, 1);
        assert.deepEqual(l.config.targets[0]!.alembic.command, ["python", "-m", "alembic"]);
        assert.equal(l.config.targets[0]!.alembic.dir, "/app/backend/open_webui");
        assert.equal(l.config.apps.length, 0, "an agent in a pod cannot stop its neighbour");
        const port = optList(c.raw.ports)
          .map((p) => obj(p, "port"))
          .find((p) => p.containerPort === 7443);
        assert.ok(port, `${where}: declares port 7443`);
        // The kubelet probes the agent's HTTP listener: it must listen beyond loopback, on the probed port.
        assert.equal(l.config.httpListen, "0.0.0.0:7444", `${where}: httpListen on the pod network for the kubelet's probes`);
        assert.ok(
          optList(c.raw.ports).some((p) => obj(p, "port").containerPort === 7444),
          `${where}: declares port 7444`,
        );
        for (const [probe, probePath] of [
          ["readinessProbe", "/readyz"],
          ["livenessProbe", "/healthz"],
        ] as const) {
          const get = obj(obj(c.raw[probe], `${where} ${probe}`).httpGet, `${where} ${probe}.httpGet`);
          assert.deepEqual([get.path, get.port], [probePath, 7444], `${where}: ${probe} on the agent's ${probePath}`);
        }
      } else if (command[0] === "flotilla-controller") {
        controllers++;
        const l = loadController(configPath, text, env);
        assertControllerConventions(where, l);
        for (const p of l.reads) assertSecretMounted(p);
        if (l.config.tls) for (const p of [l.config.tls.cert, l.config.tls.key, l.config.tls.ca]) assertSecretMounted(p);
        assertWritable(l.config.dataDir);
        assertWritable(path.dirname(l.config.auditKeyFile));
        assert.match(l.config.store, /^postgresql:\/\/flotilla:REPLACE_ME@/, "store from FLOTILLA_STORE");
        assert.deepEqual(l.config.listen, { grpc: "0.0.0.0:7440", http: "0.0.0.0:7441" });
        assert.deepEqual(
          l.config.tokens.map((t) => [t.name, t.role]),
          [
            ["admin", "admin"],
            ["migrate-job", "operator"],
          ],
        );
        // The audit key comes from its Secret through an init container that copies it.
        const copier = pod.containers.find((x) => x.init && JSON.stringify(x.raw.command).includes(l.config.auditKeyFile));
        assert.ok(copier, `${where}: nothing puts the audit key at ${l.config.auditKeyFile}`);
        // Each agent address is a Service of these manifests, on a port it serves.
        for (const ag of l.config.agents) {
          const [host, p] = ag.address.split(":");
          const svc = services.find((s) => s.name === host);
          assert.ok(svc, `${where}: agent ${ag.id} at ${ag.address}: no Service ${host}`);
          assert.ok(
            optList(obj(svc.doc.spec, "spec").ports).some((x) => obj(x, "port").port === Number(p)),
            `${where}: Service ${host} has no port ${p}`,
          );
        }
      } else assert.fail(`${where}: --config for unknown program ${command[0]}`);
    }
  }
  assert.equal(agents, 1);
  assert.equal(controllers, 1);

  // Config variants in the ConfigMaps that no container points at (the PostgreSQL agent) load too,
  // with secrets the agent container mounts.
  for (const [cmName, data] of cms) {
    for (const [key, text] of Object.entries(data)) {
      if (!key.endsWith(".yaml") || loadedKeys.has(`${cmName}/${key}`)) continue;
      assert.match(key, /^agent-postgres\.yaml$/, `ConfigMap ${cmName}: unexpected unused key ${key}`);
      const l = loadAgent(`/etc/flotilla/${key}`, str(text, key));
      assertAgentConventions(`${cmName}/${key}`, l);
      assert.equal(l.config.targets[0]!.kind, "postgresql");
      const pod = pods.find((p) => p.owner.name === "open-webui")!;
      const agent = pod.containers.find((x) => x.name === "flotilla-agent")!;
      const mounts = mountsOf(pod, agent);
      for (const p of [...l.reads, ...agentPaths(l.config).secrets]) {
        const sm = mountFor(mounts, p);
        assert.ok(sm && sm.volume.secret, `${cmName}/${key}: ${p} is not mounted in the agent container`);
        assert.ok(
          volumeKeyAt(sm, p, obj(sm.volume.secret, "secret")) in (secrets.get(str(obj(sm.volume.secret, "s").secretName, "n")) ?? {}),
          `${cmName}/${key}: no Secret key for ${p}`,
        );
      }
    }
  }
});

test("kubernetes: the migration Job runs `flotilla rollout --strategy job --wait` against the controller's Service, once", () => {
  const docs = k8sDocs();
  const secrets = secretValues(docs);
  const cms = configMaps(docs);
  const job = docs.find((d) => d.kind === "Job");
  assert.ok(job);
  const spec = obj(job.doc.spec, "job spec");
  assert.equal(spec.backoffLimit, 0);
  assert.ok(typeof spec.ttlSecondsAfterFinished === "number" && spec.ttlSecondsAfterFinished > 0);
  const pod = podsOf(docs).find((p) => p.owner === job)!;
  assert.equal(pod.spec.restartPolicy, "Never");
  const c = pod.containers[0]!;
  const command = optList(c.raw.command).map((x) => str(x, "command"));
  assert.equal(command[0], "flotilla");
  const env: Record<string, string> = {};
  for (const e of envOf(c)) {
    if (typeof e.value === "string") env[str(e.name, "name")] = e.value;
    else {
      const ref = obj(obj(e.valueFrom, "valueFrom").secretKeyRef, "secretKeyRef");
      env[str(e.name, "name")] = str(secrets.get(str(ref.name, "name"))?.[str(ref.key, "key")], "token template");
    }
  }
  assert.ok(env.FLOTILLA_TOKEN, "FLOTILLA_TOKEN from a Secret");
  // The real CLI parser accepts the command line and the environment.
  const parsed = parseCommandLine(command.slice(1), env, new Date());
  assert.ok(parsed.ok, parsed.ok ? "" : parsed.message);
  assert.equal(parsed.command.verb, "rollout");
  assert.ok(parsed.command.verb === "rollout" && parsed.command.wait && parsed.command.spec.strategy === "job");
  const selector = parsed.command.verb === "rollout" ? parsed.command.spec.selector : "";
  assert.equal(selector, "app=open-webui");
  // The controller URL is the controller's Service and HTTP port.
  const url = new URL(parsed.globals.controller);
  const svc = docs.find((d) => d.kind === "Service" && d.name === url.hostname);
  assert.ok(svc, `no Service ${url.hostname}`);
  assert.ok(optList(obj(svc.doc.spec, "spec").ports).some((p) => obj(p, "port").port === Number(url.port) && obj(p, "port").name === "http"));
  // The token is one the controller accepts with at least the operator role.
  const ctlText = str(cms.get("flotilla-controller-config")?.["controller.yaml"], "controller.yaml");
  const ctl = loadController("/etc/flotilla/controller.yaml", ctlText, { FLOTILLA_STORE: "postgresql://u@h:5432/d" });
  const tokenFile = ctl.config.tokens.find((t) => t.name === "migrate-job");
  assert.ok(tokenFile && tokenFile.role === "operator");
  // The selector matches the agent's target.
  const [k, v] = selector.split("=");
  const agent = loadAgent("/etc/flotilla/agent.yaml", str(cms.get("flotilla-agent-config")?.["agent.yaml"], "agent.yaml"));
  assert.ok(
    agent.config.targets.some((t) => t.labels[k!] === v),
    "the Job's selector matches no target",
  );
});

// ------------------------------------------------------------------------------- systemd

interface Unit {
  readonly sections: Map<string, Map<string, string[]>>;
  readonly lines: readonly string[];
}

/** A small systemd unit reader: sections, repeated keys, comments, backslash continuations. */
function readUnit(file: string): Unit {
  const lines = readFileSync(file, "utf8").split("\n");
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  let pending = "";
  for (const raw of lines) {
    const line = (pending + raw).trim();
    pending = "";
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    if (line.endsWith("\\")) {
      pending = `${line.slice(0, -1)} `;
      continue;
    }
    const sec = /^\[([A-Za-z]+)\]$/.exec(line);
    if (sec) {
      current = new Map();
      sections.set(sec[1]!, current);
      continue;
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    assert.ok(kv && current, `${rel(file)}: cannot read line ${JSON.stringify(line)}`);
    const values = current.get(kv[1]!) ?? [];
    values.push(kv[2]!.trim());
    current.set(kv[1]!, values);
  }
  return { sections, lines };
}

function one(unit: Unit, section: string, key: string): string {
  const v = unit.sections.get(section)?.get(key);
  assert.ok(v && v.length > 0, `[${section}] ${key}= is missing`);
  return v[v.length - 1]!;
}

/** systemd time span ("2h", "90s", "1h 30min", "120") in seconds. */
function timeSpan(text: string): number {
  const units: Record<string, number> = { "": 1, s: 1, sec: 1, min: 60, m: 60, h: 3600, hr: 3600, d: 86400 };
  let total = 0;
  for (const part of text.trim().split(/\s+/)) {
    const m = /^(\d+)([a-z]*)$/.exec(part);
    assert.ok(m && units[m[2]!] !== undefined, `cannot read time span ${text}`);
    total += Number(m[1]) * units[m[2]!]!;
  }
  return total;
}

const HARDENING: Record<string, string> = {
  NoNewPrivileges: "yes",
  ProtectSystem: "strict",
  ProtectHome: "yes",
  PrivateTmp: "yes",
  PrivateDevices: "yes",
  ProtectKernelTunables: "yes",
  ProtectKernelModules: "yes",
  ProtectControlGroups: "yes",
  RestrictAddressFamilies: "AF_UNIX AF_INET AF_INET6",
  RestrictSUIDSGID: "yes",
  LockPersonality: "yes",
  MemoryDenyWriteExecute: "no",
  UMask: "0077",
  KillMode: "mixed",
  Restart: "on-failure",
};

function exampleAgents(): { file: string; loaded: LoadedAgent }[] {
  return ["agent-sqlite.yaml", "agent-postgres.yaml", "agent-blue-green.yaml"].map((f) => ({
    file: f,
    loaded: loadAgent("/etc/flotilla/agent.yaml", readFileSync(path.join(DEPLOY, "examples", f), "utf8")),
  }));
}

for (const [unitName, program, stateDir] of [
  ["flotilla-agent.service", "flotilla-agent", "flotilla-agent"],
  ["flotilla-controller.service", "flotilla-controller", "flotilla"],
] as const) {
  test(`systemd: ${unitName} is hardened, runs ${program} --config as user flotilla`, () => {
    const unit = readUnit(path.join(DEPLOY, "systemd", unitName));
    assert.ok(unit.sections.has("Unit") && unit.sections.has("Install"));
    for (const [k, v] of Object.entries(HARDENING)) assert.equal(one(unit, "Service", k), v, `[Service] ${k}`);
    const user = one(unit, "Service", "User");
    assert.ok(!["root", "0", ""].includes(user), `User=${user}`);
    assert.equal(user, "flotilla");
    assert.equal(one(unit, "Service", "Group"), "flotilla");
    assert.equal(one(unit, "Service", "StateDirectory"), stateDir);
    assert.equal(unit.sections.get("Service")!.get("ExecStart")!.length, 1, "one ExecStart");
    assert.match(one(unit, "Service", "ExecStart"), new RegExp(`^/\\S+/${program} --config /etc/flotilla/[a-z-]+\\.yaml$`));
    assert.ok(timeSpan(one(unit, "Service", "TimeoutStopSec")) >= 60);
    // MemoryDenyWriteExecute=no is explained right above it (V8's JIT).
    const i = unit.lines.findIndex((l) => l.startsWith("MemoryDenyWriteExecute="));
    assert.match(unit.lines[i - 1] ?? "", /^#.*JIT/);
    // The drain-then-force behaviour of SIGTERM is documented next to KillMode.
    const k = unit.lines.findIndex((l) => l.startsWith("KillMode="));
    const before = unit.lines.slice(Math.max(0, k - 10), k).join("\n");
    assert.match(before, /first SIGTERM/i);
    assert.match(before, /second SIGTERM/i);
  });
}

test("systemd: the agent unit lets a migration drain and can write every folder the example configs use", () => {
  const unit = readUnit(path.join(DEPLOY, "systemd", "flotilla-agent.service"));
  const rw = one(unit, "Service", "ReadWritePaths")
    .split(/\s+/)
    .map((p) => p.replace(/^-/, ""));
  const state = `/var/lib/${one(unit, "Service", "StateDirectory")}`;
  const stop = timeSpan(one(unit, "Service", "TimeoutStopSec"));
  for (const { file, loaded } of exampleAgents()) {
    const c = loaded.config;
    assert.equal(c.dataDir, state, `${file}: dataDir is the unit's StateDirectory`);
    for (const p of agentPaths(c).writable) {
      assert.ok(p === state || rw.some((d) => under(p, d)), `${file}: ${p} is not writable under ProtectSystem=strict (ReadWritePaths=${rw.join(" ")})`);
    }
    for (const t of c.targets) assert.ok(stop >= t.alembic.timeoutMs / 1000, `${file}: TimeoutStopSec ${stop}s is shorter than ${t.id}'s migration timeout`);
  }
  const ctl = readUnit(path.join(DEPLOY, "systemd", "flotilla-controller.service"));
  const ctlState = `/var/lib/${one(ctl, "Service", "StateDirectory")}`;
  for (const f of ["controller.yaml", "controller-postgres.yaml"]) {
    const l = loadController("/etc/flotilla/controller.yaml", readFileSync(path.join(DEPLOY, "examples", f), "utf8"));
    assert.equal(l.config.dataDir, ctlState, `${f}: dataDir is the unit's StateDirectory`);
    const db = sqliteFile(l.config.store);
    if (db) assert.ok(under(db, ctlState), `${f}: SQLite store outside the state directory`);
  }
});

test("systemd: the polkit rule allows user flotilla exactly start/stop/restart of open-webui.service", () => {
  const rules: ((action: unknown, subject: unknown) => unknown)[] = [];
  const Result = { YES: "yes", NO: "no", AUTH_ADMIN: "auth_admin", NOT_HANDLED: "not_handled" };
  vm.runInNewContext(readFileSync(path.join(DEPLOY, "systemd", "50-flotilla-open-webui.rules"), "utf8"), {
    polkit: { Result, addRule: (f: (a: unknown, s: unknown) => unknown) => rules.push(f), log: () => undefined },
  });
  assert.equal(rules.length, 1);
  const decide = (id: string, unit: string, verb: string, user: string): unknown => {
    const details: Record<string, string> = { unit, verb };
    return rules[0]!({ id, lookup: (k: string) => details[k] }, { user, isInGroup: () => false, local: true, active: true });
  };
  const MANAGE = "org.freedesktop.systemd1.manage-units";
  for (const verb of ["start", "stop", "restart"]) assert.equal(decide(MANAGE, "open-webui.service", verb, "flotilla"), "yes", verb);
  for (const verb of ["enable", "disable", "mask", "reload-or-restart"]) assert.notEqual(decide(MANAGE, "open-webui.service", verb, "flotilla"), "yes", verb);
  assert.notEqual(decide(MANAGE, "sshd.service", "stop", "flotilla"), "yes");
  assert.notEqual(decide(MANAGE, "open-webui.service", "stop", "nobody"), "yes");
  assert.notEqual(decide("org.freedesktop.systemd1.manage-unit-files", "open-webui.service", "stop", "flotilla"), "yes");
  // The SQLite example's app commands are exactly what the rule allows.
  const sqlite = exampleAgents().find((e) => e.file === "agent-sqlite.yaml")!.loaded.config;
  for (const a of sqlite.apps) {
    for (const cmd of [a.stop, a.start]) {
      assert.ok(cmd && cmd.length === 3 && cmd[0] === "systemctl", `${a.id}: ${JSON.stringify(cmd)}`);
      assert.equal(decide(MANAGE, `${cmd[2]}.service`, cmd[1]!, "flotilla"), "yes", `${a.id}: ${cmd.join(" ")} is not allowed by the rule`);
    }
  }
});

// ------------------------------------------------------------------------------- examples

test("examples: the agent configs load with the real loader", () => {
  const byFile = new Map(exampleAgents().map((e) => [e.file, e.loaded] as const));
  for (const [file, l] of byFile) assertAgentConventions(`examples/${file}`, l);

  const sqlite = byFile.get("agent-sqlite.yaml")!;
  assert.equal(sqlite.config.agentId, "webui-host-1");
  assert.equal(sqlite.config.listen, "0.0.0.0:7443");
  assert.deepEqual(sqlite.config.tls, {
    cert: "/etc/flotilla/tls/agent.pem",
    key: "/etc/flotilla/tls/agent-key.pem",
    ca: "/etc/flotilla/tls/ca.pem",
    allow: ["spiffe://flotilla/controller"],
  });
  assert.deepEqual(
    sqlite.config.targets.map((t) => [t.id, t.kind, t.database]),
    [["webui-1", "sqlite", "sqlite:////var/lib/open-webui/webui.db"]],
  );
  assert.deepEqual(sqlite.config.targets[0]!.alembic.command, ["/opt/open-webui/venv/bin/python", "-m", "alembic"]);
  assert.deepEqual(
    sqlite.config.apps.map((a) => [a.id, a.target, a.health]),
    [["webui-1-app", "webui-1", "http://127.0.0.1:8080/health"]],
  );
  assert.deepEqual(sqlite.reads, ["/etc/flotilla/secrets/webui-secret-key"]);

  const pg = byFile.get("agent-postgres.yaml")!;
  assert.deepEqual(
    pg.config.targets.map((t) => [t.id, t.kind, t.labels.env]),
    [
      ["webui-prod", "postgresql", "prod"],
      ["webui-staging", "postgresql", "staging"],
    ],
  );
  assert.deepEqual(
    pg.config.targets.map((t) => t.lockTimeoutMs),
    [10000, 5000],
  );
  assert.ok(pg.reads.includes("/etc/flotilla/secrets/pg-password-prod") && pg.reads.includes("/etc/flotilla/secrets/pg-password-staging"));
  assert.ok(!pg.config.targets.some((t) => t.database.includes(FAKE_SECRET)), "the password stays out of the URL");

  const bg = byFile.get("agent-blue-green.yaml")!;
  assert.equal(bg.config.listen, "127.0.0.1:7443");
  assert.equal(bg.config.tls, undefined, "loopback needs no TLS");
  assert.deepEqual(bg.config.controller, { address: "http://127.0.0.1:7441", advertise: "127.0.0.1:7443", heartbeatSeconds: 15 });
  const t = bg.config.targets[0]!;
  assert.deepEqual(t.blueGreen, { green: "sqlite:////var/lib/open-webui/webui-green.db", switch: ["/usr/local/bin/lb-switch"] });
  assert.equal(t.alembic.iniFile, "alembic.ini");
  assert.deepEqual(
    bg.config.apps.map((a) => [a.id, a.color]),
    [
      ["webui-blue", "blue"],
      ["webui-green", "green"],
    ],
  );
});

test("examples: the controller configs load with the real loader", () => {
  const single = loadController("/etc/flotilla/controller.yaml", readFileSync(path.join(DEPLOY, "examples", "controller.yaml"), "utf8"));
  assertControllerConventions("examples/controller.yaml", single);
  assert.deepEqual(single.config.listen, { grpc: "0.0.0.0:7440", http: "0.0.0.0:7441" });
  assert.equal(single.config.store, "sqlite:////var/lib/flotilla/controller.db");
  assert.equal(single.config.auditKeyFile, "/var/lib/flotilla/audit.key");
  assert.deepEqual(
    single.config.tokens.map((x) => [x.name, x.role]),
    [
      ["alice", "admin"],
      ["ci", "operator"],
      ["dashboard", "viewer"],
    ],
  );
  assert.equal(single.config.agents.length, 3);
  assert.deepEqual(
    single.config.schedules.map((s) => [s.name, s.strategy, s.window, s.waves, s.toRevision]),
    [
      ["sunday-prod", "maintenance", "2h", "1,25%,100%", "head"],
      ["nightly-staging", "job", "1h", "", "head"],
    ],
  );
  assert.equal(single.config.agentTimeoutMs, 7_200_000);

  const text = readFileSync(path.join(DEPLOY, "examples", "controller-postgres.yaml"), "utf8");
  const pg = loadController("/etc/flotilla/controller.yaml", text);
  assertControllerConventions("examples/controller-postgres.yaml", pg);
  assert.equal(pg.config.store, "postgresql://flotilla@pg.internal:5432/flotilla", "no password in the store URL");
  assert.deepEqual(
    pg.config.tokens.map((x) => x.role),
    ["admin", "operator"],
  );
  assert.equal(pg.config.schedules[0]!.selector, "app=open-webui,env=prod");
  // FLOTILLA_STORE overrides the file (how Kubernetes passes the URL from a Secret).
  const viaEnv = loadController("/etc/flotilla/controller.yaml", text, { FLOTILLA_STORE: "postgresql://other@db:5432/x" });
  assert.equal(viaEnv.config.store, "postgresql://other@db:5432/x");
});

// ------------------------------------------------------------------------------- compose

test("compose: Open WebUI never migrates itself; the agent shares its data; configs load and their secrets are mounted", () => {
  const [compose, ...rest] = yamlDocs(path.join(DEPLOY, "compose", "docker-compose.yml"));
  assert.equal(rest.length, 0);
  const services = obj(compose!.services, "services");
  const declaredSecrets = obj(compose!.secrets, "secrets");
  const webui = obj(services["open-webui"], "open-webui");
  assert.equal(webui.image, "ghcr.io/open-webui/open-webui:main");
  const envRaw = webui.environment;
  const env: J = Array.isArray(envRaw) ? Object.fromEntries(envRaw.map((e) => String(e).split(/=(.*)/s).slice(0, 2))) : obj(envRaw, "open-webui environment");
  assert.equal(env.ENABLE_DB_MIGRATIONS, "false");

  const volumesOf = (svc: J): { source: string; target: string; readOnly: boolean }[] =>
    optList(svc.volumes).map((v) => {
      const [source, target, mode] = str(v, "volume").split(":");
      return { source: source!, target: target!, readOnly: mode === "ro" };
    });
  const secretsOf = (svc: J): string[] =>
    optList(svc.secrets).map((s) => {
      const source = typeof s === "string" ? s : str(obj(s, "secret").source, "secret source");
      assert.ok(source in declaredSecrets, `secret ${source} is not declared`);
      const target = typeof s === "string" ? undefined : (obj(s, "secret").target as string | undefined);
      return target === undefined ? `/run/secrets/${source}` : target.startsWith("/") ? target : `/run/secrets/${target}`;
    });
  const webuiData = volumesOf(webui).find((v) => v.target === "/app/backend/data");
  assert.ok(webuiData, "open-webui keeps its data in a volume");

  let agents = 0;
  let controllers = 0;
  for (const [name, raw] of Object.entries(services)) {
    const svc = obj(raw, name);
    const command = optList(svc.command).map((x) => str(x, "command"));
    const at = command.indexOf("--config");
    if (at < 0) continue;
    const configPath = command[at + 1]!;
    const vols = volumesOf(svc);
    const cfgVol = vols.find((v) => v.target === configPath);
    assert.ok(cfgVol && cfgVol.source.startsWith("./") && cfgVol.readOnly, `${name}: ${configPath} is not a read-only bind of a file in deploy/compose`);
    const text = readFileSync(path.join(DEPLOY, "compose", cfgVol.source), "utf8");
    const mounted = secretsOf(svc);
    assert.equal(svc.read_only, true, `${name}: read-only root file system`);
    assert.deepEqual(svc.cap_drop, ["ALL"], `${name}: drops all capabilities`);
    assert.ok(optList(svc.security_opt).includes("no-new-privileges:true"), `${name}: no-new-privileges`);
    const writable = (p: string): boolean =>
      vols.some((v) => !v.readOnly && !v.source.startsWith(".") && under(p, v.target)) || optList(svc.tmpfs).some((t) => under(p, str(t, "tmpfs")));
    if (command[0] === "flotilla-agent") {
      agents++;
      const l = loadAgent(configPath, text);
      assertAgentConventions(name, l);
      for (const p of [...l.reads, ...agentPaths(l.config).secrets]) assert.ok(mounted.includes(p), `${name}: ${p} is not one of its compose secrets`);
      for (const p of agentPaths(l.config).writable) assert.ok(writable(p), `${name}: ${p} is not on a writable volume`);
      const agentData = vols.find((v) => v.target === "/app/backend/data");
      assert.deepEqual(agentData && [agentData.source, agentData.readOnly], [webuiData.source, false], `${name}: does not share Open WebUI's data volume`);
      assert.equal(l.config.targets[0]!.database, "sqlite:////app/backend/data/webui.db");
      assert.equal(obj(svc.build, "build").target, "flotilla-openwebui", "the agent runs Open WebUI's Python");
    } else if (command[0] === "flotilla-controller") {
      controllers++;
      const l = loadController(configPath, text);
      assertControllerConventions(name, l);
      for (const p of l.reads) assert.ok(mounted.includes(p), `${name}: ${p} is not one of its compose secrets`);
      if (l.config.tls) for (const p of [l.config.tls.cert, l.config.tls.key, l.config.tls.ca]) assert.ok(mounted.includes(p), `${name}: ${p} is not mounted`);
      assert.ok(writable(l.config.dataDir) && writable(path.dirname(l.config.auditKeyFile)), `${name}: state folder not writable`);
      for (const ag of l.config.agents) {
        const [host, port] = ag.address.split(":");
        const target = obj(services[host!], `agent service ${host}`);
        assert.ok(optList(target.expose).map(String).includes(port!), `${host} does not expose ${port}`);
      }
      assert.ok(
        optList(svc.ports).some((p) => String(p).startsWith("127.0.0.1:")),
        `${name}: published on loopback only`,
      );
    } else assert.fail(`${name}: --config for unknown program`);
  }
  assert.equal(agents, 1);
  assert.equal(controllers, 1);
});

// ------------------------------------------------------------------------------- Dockerfile

test("docker: the image builds from node:20-bookworm-slim with the Debian tools and runs as a non-root user", () => {
  const text = readFileSync(path.join(DEPLOY, "docker", "Dockerfile"), "utf8");
  assert.match(text, /^ARG NODE_IMAGE=node:20-bookworm-slim$/m);
  assert.match(text, /npm ci --omit=dev/);
  // --omit=dev is right only while tsx (which runs the sources) is a runtime dependency.
  const pkg = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")) as { dependencies: J; devDependencies: J; bin: Record<string, string> };
  assert.ok("tsx" in pkg.dependencies && !("tsx" in pkg.devDependencies));
  const install = text.split("\n").find((l) => /apt-get install .*alembic/.test(l));
  assert.ok(install, "apt-get install of the tools");
  for (const p of ["alembic", "python3-psycopg2", "sqlite3", "postgresql-client"]) assert.match(install, new RegExp(`\\b${p}\\b`));
  // The default (last) stage runs as a non-root user and links every package.json bin.
  const stages = text.split(/^FROM /m);
  const last = stages[stages.length - 1]!;
  assert.match(last, /^\$\{NODE_IMAGE\} AS flotilla$/m);
  const user = [...last.matchAll(/^USER (\S+)$/gm)].map((m) => m[1]!);
  assert.ok(user.length > 0 && !/^(0|root)(:|$)/.test(user[user.length - 1]!), "USER must be non-root");
  for (const [name, file] of Object.entries(pkg.bin)) assert.ok(last.includes(`/opt/flotilla/${file} /usr/local/bin/${name}`), `bin ${name} not linked`);
});

// ------------------------------------------------------------------------------- no secrets

test("no file in deploy/ contains a real-looking secret", () => {
  const SECRET_KEY_NAME = /(password|passwd|secret|token|secret[_-]?key|api[_-]?key)$/i;
  const scan = (v: unknown, where: string): void => {
    if (Array.isArray(v)) v.forEach((x, i) => scan(x, `${where}[${i}]`));
    else if (v !== null && typeof v === "object") {
      for (const [k, x] of Object.entries(v)) {
        if (typeof x === "string" && SECRET_KEY_NAME.test(k)) assert.ok(x === "REPLACE_ME" || x.startsWith("/"), `${where}.${k} holds a literal secret`);
        scan(x, `${where}.${k}`);
      }
    }
  };
  for (const file of walk(DEPLOY)) {
    const text = readFileSync(file, "utf8");
    const where = rel(file);
    assert.doesNotMatch(text, /-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----/, `${where}: PEM material`);
    for (const m of text.matchAll(/[a-z0-9+.-]+:\/\/([^\s:@/'"]+):([^\s@/'"]+)@/gi)) {
      assert.equal(m[2], "REPLACE_ME", `${where}: URL with a password: ${m[0]}`);
    }
    for (const m of text.matchAll(/[A-Za-z0-9+_=-]{24,}/g)) {
      const w = m[0];
      const randomLooking = /^[0-9a-f]{32,}$/i.test(w) || (/\d/.test(w) && /[a-z]/.test(w) && /[A-Z]/.test(w));
      assert.ok(!randomLooking, `${where}: random-looking string ${w}`);
    }
    if (/\.ya?ml$/.test(file)) for (const [i, d] of yamlDocs(file).entries()) scan(d, `${where}#${i}`);
  }
});
