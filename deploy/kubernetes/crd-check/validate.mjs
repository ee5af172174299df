// Reads a JSON array of Prometheus Operator objects on stdin and validates each against the CRD schema
// of its kind (@kubernetes-models/prometheus-operator, generated from the operator's CRDs).
// Prints one line per object; exits 1 when any object is invalid or of a kind it does not know.
import { PrometheusRule, ServiceMonitor, PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = { PrometheusRule, ServiceMonitor, PodMonitor };
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
let failed = false;
for (const object of JSON.parse(Buffer.concat(chunks).toString())) {
  const name = `${object.kind}/${object.metadata?.name}`;
  const Model = models[object.kind];
  if (object.apiVersion !== "monitoring.coreos.com/v1" || Model === undefined) {
    console.log(`FAIL ${name}: no schema for ${object.apiVersion} ${object.kind}`);
    failed = true;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`OK ${name}`);
  } catch (error) {
    console.log(`FAIL ${name}: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
