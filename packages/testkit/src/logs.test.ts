import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { captureLogs } from "./logs.js";

describe("captureLogs", () => {
  it("captureLogs - keeps every line as parsed JSON with its fields", () => {
    const logs = captureLogs();
    logs.logger.info({ requestId: "r1" }, "call started");
    logs.logger.child({ tenant: "acme" }).warn("slow");
    expect(logs.lines()).toHaveLength(2);
    expect(logs.find("started")[0]).toMatchObject({
      level: 30,
      requestId: "r1",
      msg: "call started",
    });
    expect(logs.find(/^slow$/)[0]).toMatchObject({ level: 40, tenant: "acme" });
    expect(logs.text()).toContain('"requestId":"r1"');
    logs.clear();
    expect(logs.lines()).toEqual([]);
  });

  it("captureLogs - its destination captures another logger's output", () => {
    const logs = captureLogs();
    const other = pino({ redact: ["token"] }, logs.destination);
    other.info({ token: "secret-value" }, "login");
    expect(logs.text()).not.toContain("secret-value");
    expect(logs.find("login")[0]).toMatchObject({ token: "[Redacted]" });
  });
});
