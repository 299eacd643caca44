// /docs: an API reference generated at start-up from the contracts' descriptors (the same
// generated code that routes the calls), so it cannot drift from what the gateway serves.
// The embedded descriptors carry no source comments, so the page lists what the contract
// declares: services, methods with access level, streaming, HTTP path and Connect GET
// support, and every message and enum reachable from them with their fields.
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import type { DescEnum, DescField, DescMessage, DescService } from "@bufbuild/protobuf";
import { Access } from "@ensemble/proto";
import { accessOf, routedMethods } from "./forward.js";

const ACCESS_LABEL: Record<number, string> = {
  [Access.PUBLIC]: "PUBLIC (no token)",
  [Access.USER]: "USER (access token or API key)",
  [Access.ADMIN]: "ADMIN (admin role)",
  [Access.INTERNAL]: "INTERNAL",
};

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function anchor(typeName: string): string {
  return `t-${typeName.replace(/[^A-Za-z0-9]/g, "-")}`;
}

function fieldType(f: DescField): string {
  const link = (d: DescMessage | DescEnum): string =>
    `<a href="#${anchor(d.typeName)}">${esc(d.typeName)}</a>`;
  switch (f.fieldKind) {
    case "scalar":
      return esc(scalarName(f.scalar));
    case "enum":
      return link(f.enum);
    case "message":
      return link(f.message);
    case "list":
      return `repeated ${
        f.listKind === "scalar"
          ? esc(scalarName(f.scalar))
          : f.listKind === "enum"
            ? link(f.enum)
            : link(f.message)
      }`;
    case "map":
      return `map&lt;${esc(scalarName(f.mapKey))}, ${
        f.mapKind === "scalar"
          ? esc(scalarName(f.scalar))
          : f.mapKind === "enum"
            ? link(f.enum)
            : link(f.message)
      }&gt;`;
  }
}

const SCALAR_NAMES: Record<number, string> = {
  1: "double",
  2: "float",
  3: "int64",
  4: "uint64",
  5: "int32",
  6: "fixed64",
  7: "fixed32",
  8: "bool",
  9: "string",
  12: "bytes",
  13: "uint32",
  15: "sfixed32",
  16: "sfixed64",
  17: "sint32",
  18: "sint64",
};

function scalarName(scalar: number): string {
  return SCALAR_NAMES[scalar] ?? `scalar(${scalar})`;
}

/** Every message and enum reachable from the services' routed methods. */
function collectTypes(services: DescService[]): { messages: DescMessage[]; enums: DescEnum[] } {
  const messages = new Map<string, DescMessage>();
  const enums = new Map<string, DescEnum>();
  const visit = (m: DescMessage): void => {
    if (messages.has(m.typeName)) return;
    messages.set(m.typeName, m);
    for (const f of m.fields) {
      if (f.enum !== undefined) enums.set(f.enum.typeName, f.enum);
      if (f.message !== undefined) visit(f.message);
    }
  };
  for (const s of services) {
    for (const m of routedMethods(s)) {
      visit(m.input);
      visit(m.output);
    }
  }
  const byName = <T extends { typeName: string }>(a: T, b: T): number =>
    a.typeName.localeCompare(b.typeName);
  return { messages: [...messages.values()].sort(byName), enums: [...enums.values()].sort(byName) };
}

/** A provider-compatible HTTP route of the gateway (the OpenAI and Anthropic APIs). */
export interface HttpRoute {
  name: string;
  scope: "read" | "write";
  summary: string;
}

export function renderDocs(
  services: DescService[],
  version: string,
  httpRoutes: readonly HttpRoute[] = [],
): string {
  const { messages, enums } = collectTypes(services);
  const parts: string[] = [];
  parts.push(`<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Ensemble API reference</title>
<style>body{font:14px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
code,td.t{font-family:ui-monospace,monospace}table{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f6f6f6}
h2{border-bottom:2px solid #333;margin-top:2em}h3{margin-bottom:.2em}.a{font-weight:600}</style></head><body>
<h1>Ensemble API reference</h1>
<p>Gateway ${esc(version)}. Every method below is served over Connect (JSON and binary), gRPC and
gRPC-web at <code>POST /&lt;service&gt;/&lt;method&gt;</code>; methods without side effects also
answer Connect GET. Authenticate with <code>Authorization: Bearer &lt;access token&gt;</code>, or an
API key as <code>Authorization: Bearer ens_…</code> or <code>x-api-key</code>. Internal methods are
not reachable through the gateway and are not listed.</p>`);
  if (httpRoutes.length > 0) {
    parts.push(`<h2 id="http">Provider-compatible HTTP APIs</h2>
<p>JSON over HTTP for clients written for OpenAI or Anthropic, with the same credentials; an API
key needs the named scope.</p>
<table><tr><th>route</th><th>API key scope</th><th>what</th></tr>`);
    for (const r of httpRoutes) {
      parts.push(
        `<tr><td class="t">${esc(r.name)}</td><td>${r.scope}</td><td>${esc(r.summary)}</td></tr>`,
      );
    }
    parts.push("</table>");
  }
  parts.push("<h2>Services</h2><ul>");
  for (const s of services) {
    parts.push(`<li><a href="#${anchor(s.typeName)}">${esc(s.typeName)}</a></li>`);
  }
  parts.push("</ul>");
  for (const s of services) {
    parts.push(`<h2 id="${anchor(s.typeName)}">${esc(s.typeName)}</h2>`);
    parts.push(
      "<table><tr><th>method</th><th>access</th><th>kind</th><th>HTTP path</th><th>request → response</th></tr>",
    );
    for (const m of routedMethods(s)) {
      const getOk =
        m.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS ? " (also GET)" : "";
      parts.push(
        `<tr><td class="t">${esc(m.name)}</td><td class="a">${esc(ACCESS_LABEL[accessOf(m)] ?? "?")}</td>` +
          `<td>${m.methodKind === "server_streaming" ? "server stream" : "unary"}</td>` +
          `<td class="t">POST /${esc(s.typeName)}/${esc(m.name)}${getOk}</td>` +
          `<td class="t"><a href="#${anchor(m.input.typeName)}">${esc(m.input.name)}</a> → ` +
          `<a href="#${anchor(m.output.typeName)}">${esc(m.output.name)}</a></td></tr>`,
      );
    }
    parts.push("</table>");
  }
  parts.push("<h2>Messages</h2>");
  for (const m of messages) {
    parts.push(`<h3 id="${anchor(m.typeName)}">${esc(m.typeName)}</h3>`);
    if (m.fields.length === 0) {
      parts.push("<p>(no fields)</p>");
      continue;
    }
    parts.push("<table><tr><th>#</th><th>field (JSON name)</th><th>type</th><th>notes</th></tr>");
    for (const f of m.fields) {
      const notes = [
        f.oneof !== undefined ? `oneof ${esc(f.oneof.name)}` : "",
        f.proto.proto3Optional === true ? "optional" : "",
      ]
        .filter((n) => n !== "")
        .join(", ");
      parts.push(
        `<tr><td>${f.number}</td><td class="t">${esc(f.name)} (${esc(f.jsonName)})</td>` +
          `<td class="t">${fieldType(f)}</td><td>${notes}</td></tr>`,
      );
    }
    parts.push("</table>");
  }
  parts.push("<h2>Enums</h2>");
  for (const e of enums) {
    parts.push(`<h3 id="${anchor(e.typeName)}">${esc(e.typeName)}</h3><p>`);
    parts.push(e.values.map((v) => `<code>${esc(v.name)}</code> = ${v.number}`).join(", "));
    parts.push("</p>");
  }
  parts.push("</body></html>");
  return parts.join("\n");
}
