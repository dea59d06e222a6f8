"""A plain watch of one Deployment, as a benchmark's independent observer: every event, with the
time it arrived here, as JSON lines on stdout. Usage: watch.py NAMESPACE NAME (reads the local
cluster's CA and token from $K8S_RUN)."""
import json, os, ssl, sys, time, urllib.request

namespace, name = sys.argv[1:]
run = os.environ["K8S_RUN"]
context = ssl.create_default_context(cafile=f"{run}/certs/apiserver.crt")
token = open(f"{run}/token").read().strip()
base = f"https://127.0.0.1:16443/apis/apps/v1/namespaces/{namespace}/deployments"
while True:
    url = f"{base}?watch=1&fieldSelector=metadata.name%3D{name}&timeoutSeconds=3600"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context) as stream:
        for line in stream:
            at = time.time()
            d = json.loads(line)["object"]
            spec, status = d.get("spec", {}), d.get("status", {})
            print(json.dumps({
                "at": at,
                "image": spec["template"]["spec"]["containers"][0]["image"],
                "generation": d["metadata"].get("generation", 0),
                "observed": status.get("observedGeneration", 0),
                "desired": spec.get("replicas", 1),
                "total": status.get("replicas", 0),
                "updated": status.get("updatedReplicas", 0),
                "available": status.get("availableReplicas", 0),
            }), flush=True)
