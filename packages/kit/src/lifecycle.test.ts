import { captureLogs } from "@ensemble/testkit";
import { afterEach, describe, expect, it } from "vitest";
import { handleShutdown, retryWithBackoff, runShutdown, type ShutdownHandle } from "./lifecycle.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("lifecycle runShutdown", () => {
  it("lifecycle - steps run in order and each is logged", async () => {
    const logs = captureLogs();
    const order: string[] = [];
    const step = (name: string, ms: number) => ({
      name,
      run: async () => {
        await sleep(ms);
        order.push(name);
      },
    });
    const result = await runShutdown(
      [step("grpc server", 20), step("nats drain", 1), step("mongo disconnect", 5)],
      { logger: logs.logger, timeoutMs: 1_000 },
    );
    expect(result).toMatchObject({ ok: true, failed: [], timedOut: false });
    expect(order).toEqual(["grpc server", "nats drain", "mongo disconnect"]);
    const done = logs.find("shutdown step done").map((l) => l["step"]);
    expect(done).toEqual(["grpc server", "nats drain", "mongo disconnect"]);
  });

  it("lifecycle - a failing step is reported and the later steps still run", async () => {
    const logs = captureLogs();
    const ran: string[] = [];
    const result = await runShutdown(
      [
        {
          name: "grpc server",
          run: () => Promise.reject(new Error("drain failed")),
        },
        { name: "nats drain", run: () => Promise.resolve(void ran.push("nats")) },
      ],
      { logger: logs.logger, timeoutMs: 1_000 },
    );
    expect(result.ok).toBe(false);
    expect(result.failed).toEqual(["grpc server"]);
    expect(ran).toEqual(["nats"]);
    expect(logs.find("shutdown step failed")[0]).toMatchObject({ step: "grpc server" });
  });

  it("lifecycle - the timeout bounds the whole sequence", async () => {
    const logs = captureLogs();
    const t0 = Date.now();
    const result = await runShutdown(
      [{ name: "stuck", run: () => new Promise<void>(() => undefined) }],
      { logger: logs.logger, timeoutMs: 100 },
    );
    expect(result).toMatchObject({ ok: false, timedOut: true });
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect(logs.find("shutdown timed out")).toHaveLength(1);
  });
});

describe("lifecycle handleShutdown", () => {
  let handle: ShutdownHandle | undefined;
  afterEach(() => handle?.dispose());

  it("lifecycle - SIGTERM runs the steps once and exits 0", async () => {
    const logs = captureLogs();
    const exits: number[] = [];
    let runs = 0;
    handle = handleShutdown({
      logger: logs.logger,
      timeoutMs: 1_000,
      steps: [{ name: "server", run: () => sleep(20).then(() => void runs++) }],
      exit: (code) => void exits.push(code),
    });
    process.kill(process.pid, "SIGTERM");
    await waitFor(() => exits.length > 0);
    expect(exits).toEqual([0]);
    expect(runs).toBe(1);
    expect(logs.find("shutting down")[0]).toMatchObject({ reason: "SIGTERM" });
  });

  it("lifecycle - a failed step exits 1", async () => {
    const exits: number[] = [];
    handle = handleShutdown({
      logger: captureLogs().logger,
      timeoutMs: 1_000,
      steps: [{ name: "server", run: () => Promise.reject(new Error("boom")) }],
      exit: (code) => void exits.push(code),
    });
    process.kill(process.pid, "SIGINT");
    await waitFor(() => exits.length > 0);
    expect(exits).toEqual([1]);
  });

  it("lifecycle - a second signal during shutdown forces exit 1 at once", async () => {
    const logs = captureLogs();
    const exits: number[] = [];
    handle = handleShutdown({
      logger: logs.logger,
      timeoutMs: 5_000,
      steps: [{ name: "slow drain", run: () => sleep(300).then(() => undefined) }],
      exit: (code) => void exits.push(code),
    });
    process.kill(process.pid, "SIGTERM");
    await sleep(30);
    process.kill(process.pid, "SIGTERM");
    await waitFor(() => exits.length > 0);
    expect(exits[0]).toBe(1);
    expect(logs.find(/second shutdown request/)).toHaveLength(1);
  });

  it("lifecycle - a timeout exits 1", async () => {
    const exits: number[] = [];
    handle = handleShutdown({
      logger: captureLogs().logger,
      timeoutMs: 50,
      steps: [{ name: "stuck", run: () => new Promise<void>(() => undefined) }],
      exit: (code) => void exits.push(code),
    });
    await handle.shutdown("test");
    expect(exits).toEqual([1]);
  });
});

describe("lifecycle retryWithBackoff", () => {
  it("lifecycle - retries until success and reports each retry", async () => {
    const retries: number[] = [];
    const value = await retryWithBackoff(
      (attempt) => (attempt < 3 ? Promise.reject(new Error("not yet")) : Promise.resolve(attempt)),
      { initialDelayMs: 5, onRetry: (_e, attempt) => retries.push(attempt) },
    );
    expect(value).toBe(3);
    expect(retries).toEqual([1, 2]);
  });

  it("lifecycle - gives up after the last attempt with the last error", async () => {
    let calls = 0;
    await expect(
      retryWithBackoff(
        () => {
          calls++;
          return Promise.reject(new Error(`failure ${calls}`));
        },
        { attempts: 3, initialDelayMs: 1 },
      ),
    ).rejects.toThrow("failure 3");
    expect(calls).toBe(3);
  });
});

async function waitFor(cond: () => boolean, timeoutMs = 3_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await sleep(5);
  }
}
