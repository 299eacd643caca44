import { ConnectError } from "@connectrpc/connect";

/**
 * The error a call fails with, as a ConnectError (code, rawMessage, metadata), to assert on;
 * a call that succeeds fails the test.
 */
export async function rejection(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await promise;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail, but it succeeded");
}

/**
 * The error a promise rejects with, checked to be an instance of `type` (a test's own error
 * classes, not only ConnectError); a promise that resolves, or another error, fails the test.
 */
export async function thrown<E extends Error>(
  promise: Promise<unknown>,
  type: abstract new (...args: never[]) => E,
): Promise<E> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof type) return err;
    throw new Error(`expected a ${type.name}, got: ${String(err)}`, { cause: err });
  }
  throw new Error(`expected a ${type.name}, but the call succeeded`);
}

/** Every item of a stream, in order (a stream that fails rejects with its error). */
export async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of stream) out.push(item);
  return out;
}
