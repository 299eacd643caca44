/** The registry's version, in every log line and in its own instance record. */
export const VERSION = "0.1.0";
