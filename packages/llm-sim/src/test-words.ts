const STEMS = ["river", "lake", "stone", "cloud", "field", "maple", "harbor", "ember"];

/**
 * `n` different words (`river0 lake1 stone2 ...`, from the `from`-th), one token each, so a test
 * knows its prompt's exact token count; different `from`s give different texts.
 */
export function distinctWords(n: number, from = 0): string {
  return Array.from({ length: n }, (_, i) => `${STEMS[(from + i) % STEMS.length]}${from + i}`).join(
    " ",
  );
}
