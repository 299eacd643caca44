// Type-aware linting: the rules that matter most here are no-floating-promises and
// no-misused-promises (an unawaited promise in a gRPC handler loses errors), and a ban on deep
// imports into another package's src/ (packages talk only through their index barrel).
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  {
    ignores: [
      "**/dist/**",
      "**/node_modules/**",
      "packages/proto/src/gen/**",
      ".data/**",
      "**/*.d.ts",
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: {
          allowDefaultProject: ["*.js", "*.ts", "packages/*/bin/*.mjs"],
        },
        tsconfigRootDir: import.meta.dirname,
      },
      globals: {
        process: "readonly",
        console: "readonly",
        URL: "readonly",
        setTimeout: "readonly",
        clearTimeout: "readonly",
        setInterval: "readonly",
        clearInterval: "readonly",
        AbortController: "readonly",
        Buffer: "readonly",
      },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/no-unused-vars": [
        "error",
        { argsIgnorePattern: "^_", varsIgnorePattern: "^_" },
      ],
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              group: [
                "@ensemble/*/src/*",
                "@ensemble/*/dist/*",
                "**/packages/*/src/*",
                "../../packages/*",
                "../../../packages/*",
              ],
              message:
                "Import a workspace package by its name; never reach into another package's files.",
            },
          ],
        },
      ],
    },
  },
  {
    // The lint config itself: @eslint/js ships no types, so type-aware rules only add noise here.
    files: ["eslint.config.js"],
    ...tseslint.configs.disableTypeChecked,
  },
);
