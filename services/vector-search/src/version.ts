/** vector-search's version, in every log line. */
export const VERSION = "0.1.0";
