// Validate glTF/GLB files with the Khronos glTF validator (npm gltf-validator, installed in tests/js/).
// Usage: node tests/gltf_validate.mjs FILE [FILE ...]
// Prints one JSON report per file on stdout: {"file", "numErrors", "numWarnings", "numInfos", "messages", "info"}.
// Exit code: 0 when every file has zero errors, 1 otherwise, 2 on a usage or load problem.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "js", "package.json"));
let validator;
try {
  validator = require("gltf-validator");
} catch (e) {
  console.error("gltf-validator is not installed: run `npm install` in tests/js");
  process.exit(2);
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node tests/gltf_validate.mjs FILE [FILE ...]");
  process.exit(2);
}
let failed = false;
for (const file of files) {
  const bytes = new Uint8Array(fs.readFileSync(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 100,
    externalResourceFunction: (uri) => fs.promises.readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)))
      .then((b) => new Uint8Array(b)),
  });
  const issues = report.issues;
  failed ||= issues.numErrors > 0;
  console.log(JSON.stringify({
    file, numErrors: issues.numErrors, numWarnings: issues.numWarnings, numInfos: issues.numInfos,
    messages: issues.messages.map((m) => ({ code: m.code, severity: m.severity, message: m.message, pointer: m.pointer })),
    info: report.info,
  }));
}
process.exit(failed ? 1 : 0);
