export * from "./workflow.js";
