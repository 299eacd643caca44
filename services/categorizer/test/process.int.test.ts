// The built categorizer as a process (main.ts: config, seeding, listening), as the launcher runs
// it, behind real auth and registry processes.
import { toJson } from "@bufbuild/protobuf";
import { createClient } from "@ensemble/kit";
import { AuthService, CategorizerService, Category, ClassifyResponseSchema } from "@ensemble/proto";
import {
  startAuthProcess,
  startCategorizerProcess,
  startRegistryProcess,
  type AuthProcess,
  type MeshProcess,
} from "@ensemble/testkit";
import { afterAll, beforeAll, expect, it } from "vitest";

let auth: AuthProcess;
let registry: MeshProcess;
let categorizer: MeshProcess;

beforeAll(async () => {
  auth = await startAuthProcess();
  registry = await startRegistryProcess({ jwksUrl: auth.jwksUrl });
  categorizer = await startCategorizerProcess({
    jwksUrl: auth.jwksUrl,
    registryAddress: registry.address,
  });
}, 240_000);

afterAll(async () => {
  await categorizer?.stop();
  await registry?.stop();
  await auth?.stop();
});

it("process - seeds the global routes, classifies with a real token, and logs no token", async () => {
  const signup = await createClient(AuthService, auth.address).signup({
    email: `cat-proc-${Date.now()}@example.com`,
    password: "correct-Horse-battery-9",
  });
  const token = signup.tokens?.accessToken ?? "";
  const client = createClient(CategorizerService, categorizer.address);
  const res = await client.classify(
    { text: "Prove that the square root of 3 is irrational." },
    { headers: { authorization: `Bearer ${token}` } },
  );
  if (process.env["PRINT_EXAMPLE"] === "1")
    console.log(JSON.stringify(toJson(ClassifyResponseSchema, res), null, 2));
  expect(res.classification?.category).toBe(Category.L);
  expect(res.classification?.routeId).toBe("category-l");
  const routes = await client.listRoutes({}, { headers: { authorization: `Bearer ${token}` } });
  expect(routes.routes.map((r) => r.id)).toContain("image-input");
  expect(categorizer.output()).toMatch(/global routes loaded/);
  expect(categorizer.output()).not.toContain(token);
});
