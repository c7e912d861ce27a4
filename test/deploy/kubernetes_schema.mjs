// Validates Kubernetes objects (a JSON array on stdin) against the Kubernetes API's own
// OpenAPI schemas, as bundled by the npm package kubernetes-models (generated from the
// Kubernetes release's spec, validated with ajv): field types, required fields and enums.
// Unknown fields are not reported (the API's schemas allow them; the API server drops them).
// Usage: node kubernetes_schema.mjs NODE_MODULES_DIR < objects.json
// Prints a PASS or FAIL line per object; exits 1 when any object fails.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.argv[2], "noop.js"));
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const object of objects) {
  const [group, version] = object.apiVersion.includes("/")
    ? object.apiVersion.split("/")
    : ["", object.apiVersion];
  const name = `${object.kind} ${object.metadata.name}`;
  try {
    const models = require(`kubernetes-models/${group ? group + "/" : ""}${version}/${object.kind}`);
    new models[object.kind](object).validate();
    console.log(`PASS ${name} matches the Kubernetes ${object.apiVersion} schema`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name} against the Kubernetes ${object.apiVersion} schema: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
