// Validates custom resources with the @kubernetes-models validators (compiled from the
// upstream KEDA and Prometheus Operator API types). Reads a JSON array of objects on stdin,
// prints a JSON array with one entry per object: {kind, name, error|null}.
// Used by tests/config/test_deploy_crds.py; a kind without a model is an error, not a pass.
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = {
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "monitoring.coreos.com/v1/PodMonitor": PodMonitor,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((object) => {
  const key = `${object.apiVersion}/${object.kind}`;
  const name = object.metadata?.name ?? "?";
  const Model = models[key];
  if (!Model) return { kind: key, name, error: `no validator for ${key}` };
  try {
    new Model(object).validate();
    return { kind: key, name, error: null };
  } catch (error) {
    return { kind: key, name, error: String(error.message ?? error) };
  }
});
process.stdout.write(JSON.stringify(results));
