// CI checks of the deployment files, with nothing but Node (no Docker, no kubectl): the compose
// file parses and refers only to Dockerfile targets, entry points and .env.example variables;
// the Dockerfile installs every workspace; the Kubernetes overlays render (a small kustomize
// subset: resources, generators, namespace, replicas, JSON 6902 patches, images) and their
// selectors, ports, probes, ConfigMaps, Secrets and autoscaling targets all line up.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { parseEnv } from "node:util";
import { parse, parseAllDocuments } from "yaml";
import { describe, expect, it } from "vitest";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const read = (path: string) => readFileSync(join(root, path), "utf8");

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v !== null && typeof v === "object" ? (v as Obj) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? (v as unknown[]) : []);
const str = (v: unknown): string => (typeof v === "string" ? v : "");

// ---------------------------------------------------------------------------- Dockerfile ----

const dockerfile = read("Dockerfile");
const targets = new Set([...dockerfile.matchAll(/^FROM\s+\S+\s+AS\s+(\S+)/gim)].map((m) => m[1]!));

/** Every workspace directory named by the root package.json's globs. */
function workspaces(): string[] {
  const globs = (JSON.parse(read("package.json")) as { workspaces: string[] }).workspaces;
  const out: string[] = [];
  for (const glob of globs) {
    if (glob.endsWith("/*")) {
      const dir = glob.slice(0, -2);
      for (const name of readdirSync(join(root, dir))) {
        if (existsSync(join(root, dir, name, "package.json"))) out.push(`${dir}/${name}`);
      }
    } else if (existsSync(join(root, glob, "package.json"))) out.push(glob);
  }
  return out;
}

/** The service names and entry points deploy/docker/entrypoint.sh accepts. */
const entrypoint = read("deploy/docker/entrypoint.sh");
const entryNames = new Set(
  [
    ...entrypoint.matchAll(/^\s+([a-z| -]+)\)\s*$/gm),
    ...entrypoint.matchAll(/^\s+([a-z| -]+)\)\s+main=/gm),
  ]
    .flatMap((m) => m[1]!.split("|").map((s) => s.trim()))
    .filter((s) => s !== ""),
);
const entryMains = [...entrypoint.matchAll(/main="([^"$]+)"/g)].map((m) => m[1]!);

describe("Dockerfile", () => {
  it("deploy - copies every workspace's package.json before npm ci (else npm ci fails)", () => {
    const missing = workspaces().filter(
      (ws) => !new RegExp(`^COPY\\s+${ws}/package\\.json\\s`, "m").test(dockerfile),
    );
    expect(missing).toEqual([]);
  });

  it("deploy - has the stages the compose file and the docs name, and runs as a non-root user", () => {
    for (const stage of ["deps", "build", "prod-deps", "runtime"]) expect(targets).toContain(stage);
    const runtime = dockerfile.slice(dockerfile.search(/AS runtime/));
    expect(runtime).toMatch(/^USER node$/m);
    expect(runtime).toMatch(/NODE_ENV=production/);
  });

  it("deploy - every entry point the image's entrypoint names is a file the build produces", () => {
    expect(entryNames).toContain("gateway");
    for (const main of entryMains) {
      // dist/... is built from src/... (.ts) or is a file in the repository.
      const source = main
        .replace(/\/dist\/src\/(.+)\.js$/, "/src/$1.ts")
        .replace(/^packages\/llm-sim\/dist\/(.+)\.js$/, "packages/llm-sim/src/$1.ts");
      expect(existsSync(join(root, source)), `${main} (from ${source})`).toBe(true);
    }
  });
});

// ------------------------------------------------------------------------------- compose ----

/** Names .env.example defines, set (`NAME=`) or shown commented out (`# NAME=`). */
const envExample = new Set(
  [...read(".env.example").matchAll(/^#?\s*([A-Z][A-Z0-9_]*)=/gm)].map((m) => m[1]!),
);

describe("docker-compose.yml", () => {
  const text = read("docker-compose.yml");
  const compose = obj(parse(text, { merge: true }));
  const services = obj(compose["services"]);

  it("deploy - parses, and builds only targets the Dockerfile has", () => {
    expect(Object.keys(services).length).toBeGreaterThan(5);
    for (const [name, raw] of Object.entries(services)) {
      const build = obj(obj(raw)["build"]);
      if (Object.keys(build).length === 0) continue;
      expect(str(build["context"]), name).toBe(".");
      expect(targets, `${name} build target`).toContain(str(build["target"]));
    }
  });

  it("deploy - every ${VARIABLE} it reads is listed in .env.example", () => {
    const used = [...text.matchAll(/(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1]!);
    expect(used.length).toBeGreaterThan(10);
    expect([...new Set(used)].filter((v) => !envExample.has(v))).toEqual([]);
  });

  it("deploy - dependencies exist; long-running services have healthchecks, restarts and memory limits", () => {
    for (const [name, raw] of Object.entries(services)) {
      const svc = obj(raw);
      for (const [dep, cond] of Object.entries(obj(svc["depends_on"]))) {
        expect(services, `${name} depends on ${dep}`).toHaveProperty(dep);
        const condition = str(obj(cond)["condition"]);
        expect(
          ["service_healthy", "service_completed_successfully"],
          `${name} -> ${dep}`,
        ).toContain(condition);
        if (condition === "service_healthy") {
          expect(obj(services[dep])["healthcheck"], `${dep} needs a healthcheck`).toBeDefined();
        }
      }
      expect(svc["mem_limit"], `${name} mem_limit`).toBeDefined();
      if (str(svc["restart"]) !== "no") {
        expect(str(svc["restart"]), `${name} restart`).toBe("unless-stopped");
        expect(svc["healthcheck"], `${name} healthcheck`).toBeDefined();
      }
      const image = str(svc["image"]);
      if (image.includes("ENSEMBLE_IMAGE") || image.startsWith("ensemble")) {
        const command = arr(svc["command"]).map(str);
        const first = command[0] ?? "gateway";
        expect(
          entryNames.has(first) || first === "sh" || first.endsWith(".js"),
          `${name}: ${first}`,
        ).toBe(true);
      }
    }
  });

  it("deploy - only the gateway publishes a port", () => {
    const published = Object.entries(services).filter(([, s]) => obj(s)["ports"] !== undefined);
    expect(published.map(([n]) => n)).toEqual(["gateway"]);
  });
});

// ------------------------------------------------------------------------------ kustomize ----

interface Resource {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [key: string]: unknown;
}

function loadYamlDocs(path: string): Resource[] {
  return parseAllDocuments(readFileSync(path, "utf8"))
    .map((d) => d.toJS() as Resource | null)
    .filter((d): d is Resource => d !== null);
}

/** Applies the JSON 6902 ops kustomize overlays here use: add, replace, remove. */
function applyPatch(target: Obj, ops: Array<{ op: string; path: string; value?: unknown }>): void {
  for (const { op, path, value } of ops) {
    const keys = path
      .split("/")
      .slice(1)
      .map((k) => k.replaceAll("~1", "/").replaceAll("~0", "~"));
    const last = keys.pop()!;
    let node: unknown = target;
    for (const key of keys) {
      node = Array.isArray(node) ? node[Number(key)] : obj(node)[key];
      if (node === undefined) throw new Error(`patch path ${path} does not exist`);
    }
    const parent = node as Obj;
    if (op === "remove") delete parent[last];
    else if (op === "replace" && !(last in parent))
      throw new Error(`replace: ${path} does not exist`);
    else parent[last] = value;
  }
}

/** Data of a generator: literals, env files (a missing secrets.env falls back to its .example), files. */
function generatorData(dir: string, gen: Obj): Record<string, string> {
  const data: Record<string, string> = {};
  for (const literal of arr(gen["literals"]).map(str)) {
    const eq = literal.indexOf("=");
    data[literal.slice(0, eq)] = literal.slice(eq + 1);
  }
  for (const env of arr(gen["envs"]).map(str)) {
    expect(env, "generator files must stay inside the kustomization").not.toMatch(/^\.\.|^\//);
    const path = existsSync(join(dir, env)) ? join(dir, env) : join(dir, `${env}.example`);
    expect(existsSync(path), `${relative(root, join(dir, env))} or its .example`).toBe(true);
    Object.assign(data, parseEnv(readFileSync(path, "utf8")));
  }
  for (const file of arr(gen["files"]).map(str)) {
    expect(file, "generator files must stay inside the kustomization").not.toMatch(/^\.\.|^\//);
    data[file] = readFileSync(join(dir, file), "utf8");
  }
  return data;
}

function build(dir: string): Resource[] {
  const k = obj(parse(readFileSync(join(dir, "kustomization.yaml"), "utf8")));
  let out: Resource[] = [];
  for (const entry of arr(k["resources"]).map(str)) {
    const path = join(dir, entry);
    out.push(...(statSync(path).isDirectory() ? build(path) : loadYamlDocs(path)));
  }
  const generate = (kind: "ConfigMap" | "Secret", gens: unknown) => {
    for (const gen of arr(gens).map(obj)) {
      const name = str(gen["name"]);
      const data = generatorData(dir, gen);
      const existing = out.find((r) => r.kind === kind && r.metadata.name === name);
      if (str(gen["behavior"]) === "merge" || str(gen["behavior"]) === "replace") {
        expect(existing, `${kind} ${name} to ${str(gen["behavior"])}`).toBeDefined();
        existing!["data"] =
          str(gen["behavior"]) === "merge" ? { ...obj(existing!["data"]), ...data } : data;
      } else {
        expect(existing, `${kind} ${name} generated twice`).toBeUndefined();
        out.push({ apiVersion: "v1", kind, metadata: { name }, data });
      }
    }
  };
  generate("ConfigMap", k["configMapGenerator"]);
  generate("Secret", k["secretGenerator"]);
  for (const patch of arr(k["patches"]).map(obj)) {
    const target = obj(patch["target"]);
    const ops = parse(str(patch["patch"])) as Array<{ op: string; path: string; value?: unknown }>;
    const hits = out.filter(
      (r) =>
        (target["kind"] === undefined || r.kind === target["kind"]) &&
        (target["name"] === undefined || r.metadata.name === target["name"]),
    );
    expect(hits.length, `patch target ${JSON.stringify(target)}`).toBeGreaterThan(0);
    for (const r of hits) applyPatch(r, ops);
  }
  for (const rep of arr(k["replicas"]).map(obj)) {
    const d = out.find((r) => r.kind === "Deployment" && r.metadata.name === rep["name"]);
    expect(d, `replicas: ${str(rep["name"])}`).toBeDefined();
    obj(d!["spec"])["replicas"] = rep["count"];
  }
  const images = arr(k["images"]).map(obj);
  if (images.length > 0) {
    for (const c of out.flatMap(containers)) {
      const image = images.find((i) => i["name"] === c["image"]);
      if (image !== undefined) c["image"] = `${str(image["newName"])}:${String(image["newTag"])}`;
    }
  }
  if (k["namespace"] !== undefined)
    out = out.map((r) => ({ ...r, metadata: { ...r.metadata, namespace: str(k["namespace"]) } }));
  return out;
}

function podSpec(r: Resource): Obj {
  return obj(obj(obj(r["spec"])["template"])["spec"]);
}
function containers(r: Resource): Obj[] {
  if (r.kind !== "Deployment") return [];
  const spec = podSpec(r);
  return [...arr(spec["initContainers"]), ...arr(spec["containers"])].map(obj);
}
function matches(
  selector: Record<string, string>,
  labels: Record<string, string> | undefined,
): boolean {
  return (
    Object.keys(selector).length > 0 &&
    Object.entries(selector).every(([k, v]) => labels?.[k] === v)
  );
}

const overlays = ["dev", "prod"];

describe.each(overlays)("deploy/k8s overlay %s", (overlay) => {
  const resources = build(join(root, "deploy/k8s/overlays", overlay));
  const of = (kind: string) => resources.filter((r) => r.kind === kind);
  const deployments = of("Deployment");
  const named = (kind: string, name: string) =>
    resources.find((r) => r.kind === kind && r.metadata.name === name);
  const podLabels = (d: Resource) =>
    obj(obj(obj(d["spec"])["template"])["metadata"])["labels"] as Record<string, string>;

  it("deploy - renders every service, each in one namespace", () => {
    const names = deployments.map((d) => d.metadata.name);
    for (const svc of [
      "auth",
      "registry",
      "model-proxy",
      "categorizer",
      "workflow",
      "vector-search",
      "gateway",
    ]) {
      expect(names).toContain(svc);
      expect(named("Service", svc), `Service ${svc}`).toBeDefined();
      expect(named("ServiceAccount", svc), `ServiceAccount ${svc}`).toBeDefined();
    }
    expect(new Set(resources.map((r) => r.metadata.namespace)).size).toBe(1);
  });

  it("deploy - every Deployment's selector matches its pod labels and every Service selects pods", () => {
    for (const d of deployments) {
      const selector = obj(obj(d["spec"])["selector"])["matchLabels"] as Record<string, string>;
      expect(matches(selector, podLabels(d)), d.metadata.name).toBe(true);
      expect(
        named("ServiceAccount", str(podSpec(d)["serviceAccountName"])),
        `${d.metadata.name} SA`,
      ).toBeDefined();
    }
    for (const svc of of("Service")) {
      const selector = obj(svc["spec"])["selector"] as Record<string, string>;
      const pods = deployments.filter((d) => matches(selector, podLabels(d)));
      expect(pods.length, `Service ${svc.metadata.name} selects nothing`).toBeGreaterThan(0);
      // Service ports: targetPort names a container port of the selected pods, same number.
      for (const port of arr(obj(svc["spec"])["ports"]).map(obj)) {
        for (const d of pods) {
          const cports = arr(obj(arr(podSpec(d)["containers"])[0])["ports"]).map(obj);
          const hit = cports.find(
            (p) => p["name"] === port["targetPort"] || p["containerPort"] === port["targetPort"],
          );
          expect(
            hit,
            `${svc.metadata.name}:${String(port["name"])} -> ${d.metadata.name}`,
          ).toBeDefined();
          expect(hit!["containerPort"], `${svc.metadata.name}:${String(port["name"])}`).toBe(
            port["port"],
          );
        }
      }
    }
  });

  it("deploy - gRPC services are headless, probed on grpc.health.v1 at their grpc port, and listen there", () => {
    for (const d of deployments) {
      const c = obj(arr(podSpec(d)["containers"])[0]);
      const ports = arr(c["ports"]).map(obj);
      const grpc = ports.find((p) => p["name"] === "grpc");
      for (const probe of ["readinessProbe", "livenessProbe"])
        expect(c[probe], `${d.metadata.name} ${probe}`).toBeDefined();
      if (grpc === undefined) {
        // HTTP servers (gateway, llm-sim): probes on a named port they expose.
        for (const probe of ["readinessProbe", "livenessProbe"]) {
          const port = obj(obj(c[probe])["httpGet"])["port"];
          expect(
            ports.some((p) => p["name"] === port || p["containerPort"] === port),
            `${d.metadata.name} ${probe}`,
          ).toBe(true);
        }
        continue;
      }
      expect(
        obj(named("Service", d.metadata.name)?.["spec"])["clusterIP"],
        `${d.metadata.name} headless`,
      ).toBe("None");
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        expect(obj(obj(c[probe])["grpc"])["port"], `${d.metadata.name} ${probe}`).toBe(
          grpc["containerPort"],
        );
      }
      const listen = arr(c["env"])
        .map(obj)
        .find((e) => str(e["name"]).endsWith("_ADDR") && str(e["value"]).startsWith("0.0.0.0:"));
      expect(str(listen?.["value"]), `${d.metadata.name} listens on its grpc port`).toBe(
        `0.0.0.0:${String(grpc["containerPort"])}`,
      );
    }
  });

  it("deploy - peers' addresses in the shared ConfigMap point at Services and their grpc ports", () => {
    const env = obj(named("ConfigMap", "ensemble-env")?.["data"]);
    const addrs = Object.entries(env).filter(([k]) => k.endsWith("_ADDR"));
    expect(addrs.length).toBeGreaterThan(4);
    for (const [key, value] of addrs) {
      const [host, port] = str(value).split(":");
      const svc = named("Service", host!);
      expect(svc, `${key}=${str(value)}`).toBeDefined();
      const grpc = arr(obj(svc!["spec"])["ports"])
        .map(obj)
        .find((p) => p["name"] === "grpc");
      expect(grpc?.["port"], `${key}=${str(value)}`).toBe(Number(port));
    }
  });

  it("deploy - every referenced ConfigMap, Secret and key exists", () => {
    for (const d of deployments) {
      const refs: Array<{ kind: string; name: string; key?: string; optional?: boolean }> = [];
      for (const c of containers(d)) {
        for (const from of arr(c["envFrom"]).map(obj)) {
          if (from["configMapRef"])
            refs.push({ kind: "ConfigMap", name: str(obj(from["configMapRef"])["name"]) });
          if (from["secretRef"])
            refs.push({ kind: "Secret", name: str(obj(from["secretRef"])["name"]) });
        }
        for (const e of arr(c["env"]).map(obj)) {
          const vf = obj(e["valueFrom"]);
          for (const [field, kind] of [
            ["secretKeyRef", "Secret"],
            ["configMapKeyRef", "ConfigMap"],
          ] as const) {
            const ref = obj(vf[field]);
            if (vf[field])
              refs.push({
                kind,
                name: str(ref["name"]),
                key: str(ref["key"]),
                optional: ref["optional"] === true,
              });
          }
        }
      }
      for (const v of arr(podSpec(d)["volumes"]).map(obj)) {
        if (v["configMap"])
          refs.push({ kind: "ConfigMap", name: str(obj(v["configMap"])["name"]) });
        if (v["secret"]) refs.push({ kind: "Secret", name: str(obj(v["secret"])["secretName"]) });
      }
      for (const ref of refs) {
        const target = named(ref.kind, ref.name);
        expect(target, `${d.metadata.name}: ${ref.kind} ${ref.name}`).toBeDefined();
        if (ref.key !== undefined && ref.optional !== true) {
          expect(
            obj(target!["data"]),
            `${d.metadata.name}: ${ref.kind} ${ref.name} key ${ref.key}`,
          ).toHaveProperty(ref.key);
        }
      }
    }
    expect(Object.keys(obj(named("ConfigMap", "ensemble-config")?.["data"]))).toEqual(
      expect.arrayContaining(["models.yaml", "addons.yaml", "templates.yaml", "routes.yaml"]),
    );
  });

  it("deploy - containers run as non-root on a read-only root filesystem with resource limits", () => {
    for (const d of deployments) {
      for (const c of containers(d)) {
        const sc = obj(c["securityContext"]);
        const who = `${d.metadata.name}/${str(c["name"])}`;
        expect(sc["runAsNonRoot"], who).toBe(true);
        expect(sc["readOnlyRootFilesystem"], who).toBe(true);
        expect(sc["allowPrivilegeEscalation"], who).toBe(false);
        expect(obj(obj(c["resources"])["limits"])["memory"], who).toBeDefined();
        expect(obj(obj(c["resources"])["requests"])["cpu"], who).toBeDefined();
      }
    }
  });

  it("deploy - autoscalers and disruption budgets target existing Deployments", () => {
    for (const hpa of of("HorizontalPodAutoscaler")) {
      const ref = obj(obj(hpa["spec"])["scaleTargetRef"]);
      expect(named(str(ref["kind"]), str(ref["name"])), `HPA ${hpa.metadata.name}`).toBeDefined();
      expect(Number(obj(hpa["spec"])["minReplicas"])).toBeLessThanOrEqual(
        Number(obj(hpa["spec"])["maxReplicas"]),
      );
    }
    for (const pdb of of("PodDisruptionBudget")) {
      const selector = obj(obj(pdb["spec"])["selector"])["matchLabels"] as Record<string, string>;
      expect(
        deployments.some((d) => matches(selector, podLabels(d))),
        `PDB ${pdb.metadata.name}`,
      ).toBe(true);
    }
    expect(of("HorizontalPodAutoscaler").length).toBeGreaterThanOrEqual(7);
    expect(of("PodDisruptionBudget").length).toBeGreaterThanOrEqual(7);
  });

  it("deploy - network policies deny ingress by default; only the gateway accepts traffic from outside", () => {
    const policies = of("NetworkPolicy");
    const denyAll = policies.find((p) => {
      const spec = obj(p["spec"]);
      return Object.keys(obj(spec["podSelector"])).length === 0 && spec["ingress"] === undefined;
    });
    expect(denyAll).toBeDefined();
    for (const p of policies) {
      for (const rule of arr(obj(p["spec"])["ingress"]).map(obj)) {
        const from = arr(rule["from"]).map(obj);
        const open =
          from.length === 0 ||
          from.some((f) => f["ipBlock"] !== undefined || f["namespaceSelector"] !== undefined);
        if (open) {
          const selector = obj(obj(p["spec"])["podSelector"])["matchLabels"] as Record<
            string,
            string
          >;
          expect(selector, `${p.metadata.name} opens pods to outside`).toEqual({
            "app.kubernetes.io/name": "gateway",
          });
        }
      }
    }
  });
});
