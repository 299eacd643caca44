import { randomBytes } from "node:crypto";

const MAX = 40;
let counter = 0;

/**
 * A name no other test (in this run or a concurrent one) gets: `<prefix>_<pid><counter><random>`,
 * lower case `[a-z0-9_]`, at most 40 characters, starting with a letter. Valid as a MongoDB
 * database name (FerretDB's limits included) and as a NATS stream, consumer or KV bucket name.
 * The prefix is lower-cased, other characters become "_", and it is cut to fit.
 */
export function uniqueName(prefix: string): string {
  counter += 1;
  const suffix =
    process.pid.toString(36) +
    counter.toString(36) +
    randomBytes(4).readUInt32BE(0).toString(36).padStart(7, "0");
  let head = prefix.toLowerCase().replace(/[^a-z0-9_]+/g, "_");
  if (!/^[a-z]/.test(head)) head = "t" + head;
  head = head.slice(0, MAX - suffix.length - 1);
  return `${head}_${suffix}`;
}
