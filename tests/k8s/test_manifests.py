"""Properties of the rendered Kubernetes manifests (k8s/overlays/example),
so that a later edit cannot silently drop them. Run by scripts/k8s-check.sh
with the rendered YAML in SPREEKKAMER_K8S_RENDERED."""

import ipaddress
import json
import os
import re
import unittest

import yaml

RENDERED = os.environ.get("SPREEKKAMER_K8S_RENDERED", "/tmp/spreekkamer-k8s.yaml")
SECRET_WORDS = re.compile(r"secret|password|passwd|token|private|credential|redis_url|key$", re.I)


def load():
    with open(RENDERED, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]


def seconds(duration):
    m = re.fullmatch(r"(\d+)(s|m|h)", duration)
    assert m, duration
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


class Manifests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs = load()
        cls.config = one(cls.docs, "ConfigMap", "spreekkamer-config")["data"]

    def test_everything_is_in_the_namespace(self):
        for d in self.docs:
            if d["kind"] == "Namespace":
                continue
            self.assertEqual(d["metadata"].get("namespace"), "spreekkamer", f"{d['kind']}/{d['metadata']['name']}")

    def test_media_nodes_use_the_host_network_and_drain_before_kubernetes_kills_them(self):
        ds = one(self.docs, "DaemonSet", "spreekkamer-media")
        pod = ds["spec"]["template"]["spec"]
        self.assertTrue(pod.get("hostNetwork"), "media nodes need hostNetwork")
        self.assertEqual(pod.get("dnsPolicy"), "ClusterFirstWithHostNet")
        c = pod["containers"][0]
        self.assertEqual(c["args"][0], "sfu")
        self.assertIn("--announce-ip=$(HOST_IP)", c["args"])
        host_ip = [e for e in c["env"] if e["name"] == "HOST_IP"][0]
        self.assertEqual(host_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP")
        drain = seconds(self.config["SPREEKKAMER_DRAIN_TIMEOUT"])
        self.assertGreater(pod["terminationGracePeriodSeconds"], drain, "grace must outlast --drain-timeout")
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertIn("--redis-file=/run/secrets/spreekkamer/redis-url", c["args"])
        ports = {(p["containerPort"], p["protocol"]) for p in c["ports"]}
        self.assertIn((int(self.config["SPREEKKAMER_UDP_PORT"]), "UDP"), ports)
        self.assertIn((int(self.config["SPREEKKAMER_TCP_PORT"]), "TCP"), ports)

    def test_edges_are_a_deployment_behind_service_ingress_hpa_and_pdb(self):
        dep = one(self.docs, "Deployment", "spreekkamer-edge")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        c = dep["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(c["args"][0], "signaling")
        self.assertIn("--peer-advertise=$(POD_IP):7001", c["args"])
        # TURN: URIs from the ConfigMap, the secret as a mounted file.
        self.assertIn("--turn-secret-file=/run/secrets/spreekkamer/turn-secret", c["args"])
        self.assertTrue(self.config["SPREEKKAMER_TURN_URIS"].startswith("turn:"))
        items = {i["key"] for v in dep["spec"]["template"]["spec"]["volumes"] for i in v.get("secret", {}).get("items", [])}
        self.assertIn("turn-secret", items)
        svc = one(self.docs, "Service", "spreekkamer-edge")
        self.assertTrue(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()))
        ing = one(self.docs, "Ingress", "spreekkamer")
        backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        self.assertEqual(backend["name"], "spreekkamer-edge")
        self.assertTrue(ing["spec"].get("tls"), "the Ingress terminates TLS")
        # The edges cannot cap connections per browser behind the controller: the Ingress must.
        limit = ing["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/limit-connections")
        self.assertTrue(limit and int(limit) > 0, "the Ingress bounds connections per client address")
        hpa = one(self.docs, "HorizontalPodAutoscaler", "spreekkamer-edge")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], "spreekkamer-edge")
        self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2)
        pdb = one(self.docs, "PodDisruptionBudget", "spreekkamer-edge")
        self.assertTrue(all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()))

    def test_every_container_is_locked_down_sized_and_probed(self):
        for w in workloads(self.docs):
            name = f"{w['kind']}/{w['metadata']['name']}"
            pod = w["spec"]["template"]["spec"]
            self.assertIs(pod.get("automountServiceAccountToken"), False, name)
            self.assertTrue(pod["securityContext"].get("runAsNonRoot"), name)
            self.assertEqual(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", name)
            for c in pod["containers"]:
                sc = c["securityContext"]
                self.assertIs(sc.get("readOnlyRootFilesystem"), True, name)
                self.assertIs(sc.get("allowPrivilegeEscalation"), False, name)
                self.assertEqual(sc["capabilities"]["drop"], ["ALL"], name)
                self.assertNotIn("add", sc["capabilities"], name)
                for kind in ("requests", "limits"):
                    self.assertIn("cpu", c["resources"][kind], name)
                    self.assertIn("memory", c["resources"][kind], name)
                self.assertIn("readinessProbe", c, name)
                self.assertIn("livenessProbe", c, name)

    def test_the_redis_url_is_a_mounted_secret_file_on_edges_and_media_nodes(self):
        for kind, name in (("Deployment", "spreekkamer-edge"), ("DaemonSet", "spreekkamer-media")):
            pod = one(self.docs, kind, name)["spec"]["template"]["spec"]
            self.assertIn("--redis-file=/run/secrets/spreekkamer/redis-url", pod["containers"][0]["args"], name)
            mounted = {
                (v["secret"]["secretName"], i["key"], i["path"])
                for v in pod["volumes"]
                if "secret" in v
                for i in v["secret"].get("items", [])
            }
            self.assertIn(("spreekkamer-secrets", "redis-url", "redis-url"), mounted, name)
            mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
            self.assertIn("/run/secrets/spreekkamer", mounts, name)

    def test_no_secret_in_a_configmap_or_a_literal_env_value(self):
        for cm in by_kind(self.docs, "ConfigMap"):
            for key in cm.get("data", {}):
                self.assertNotRegex(key, SECRET_WORDS, f"ConfigMap {cm['metadata']['name']} key {key}")
        for w in workloads(self.docs):
            for c in w["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    if SECRET_WORDS.search(e["name"]):
                        self.assertIn("secretKeyRef", e.get("valueFrom", {}), f"{w['metadata']['name']}: {e['name']}")
                    if w["metadata"]["name"] in ("spreekkamer-edge", "spreekkamer-media"):
                        # The Redis URL holds Redis's password: a mounted file
                        # (--redis-file), not the environment.
                        self.assertNotEqual(e["name"], "SPREEKKAMER_REDIS", w["metadata"]["name"])
                for a in c.get("args", []):
                    self.assertNotRegex(a, r"--(jwt|link|turn)-secret=|--redis=", "a secret on the command line")
        self.assertEqual(by_kind(self.docs, "Secret"), [], "Secrets are created by the operator, never rendered from git")

    def test_network_policies_deny_by_default_and_open_only_what_is_needed(self):
        pols = {p["metadata"]["name"]: p for p in by_kind(self.docs, "NetworkPolicy")}
        deny = pols["default-deny-ingress"]
        self.assertEqual(deny["spec"]["podSelector"], {})
        self.assertNotIn("ingress", deny["spec"])
        redis = pols["redis"]["spec"]
        self.assertEqual(redis["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "spreekkamer-redis")
        sources = {f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for f in redis["ingress"][0]["from"]}
        self.assertEqual(sources, {"spreekkamer-edge", "spreekkamer-media"})
        peer = pols["edge-peer"]["spec"]["ingress"][0]
        self.assertEqual([f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for f in peer["from"]], ["spreekkamer-edge"])
        self.assertEqual([p["port"] for p in peer["ports"]], [7001])
        # The Ingress controller reaches 8080 only, monitoring 9100 only.
        rules = {
            f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]: sorted(p["port"] for p in r["ports"])
            for r in pols["edge-http"]["spec"]["ingress"]
            for f in r["from"]
        }
        self.assertEqual(rules, {"ingress-nginx": [8080], "monitoring": [9100]})

    def test_edges_trust_the_ingress_pod_network_for_x_forwarded_for(self):
        # Without trusted proxies every browser is the ingress-nginx pod's
        # address: in the audit log and in the per-address limits.
        dep = one(self.docs, "Deployment", "spreekkamer-edge")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        self.assertIn("spreekkamer-config", refs, "the edges read the ConfigMap")
        self.assertFalse(any(a.startswith("--trusted-proxy") for a in c["args"]), "one place: the ConfigMap")
        self.assertNotIn("SPREEKKAMER_TRUSTED_PROXIES", {e["name"] for e in c.get("env", [])})
        value = self.config.get("SPREEKKAMER_TRUSTED_PROXIES", "")
        entries = [e.strip() for e in value.split(",")]
        self.assertTrue(value and all(entries), f"trusted proxies configured: {value!r}")
        for entry in entries:
            net = ipaddress.ip_network(entry, strict=True)
            # The edge refuses anything broader (anyone could then forge
            # X-Forwarded-For): keep the manifest startable.
            self.assertGreaterEqual(net.prefixlen, 8 if net.version == 4 else 7, entry)

    def test_edge_metrics_are_not_on_the_port_the_ingress_publishes(self):
        dep = one(self.docs, "Deployment", "spreekkamer-edge")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        self.assertIn("--metrics-listen=0.0.0.0:9100", c["args"])
        sm = one(self.docs, "ServiceMonitor", "spreekkamer-edge")
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], "metrics")
        ing = one(self.docs, "Ingress", "spreekkamer")
        for path in ing["spec"]["rules"][0]["http"]["paths"]:
            self.assertEqual(path["backend"]["service"]["port"]["name"], "http")

    def test_monitoring_selects_real_services_and_alerts_are_complete(self):
        services = by_kind(self.docs, "Service")
        for sm in by_kind(self.docs, "ServiceMonitor"):
            sel = sm["spec"]["selector"]["matchLabels"]
            port = sm["spec"]["endpoints"][0]["port"]
            matching = [s for s in services if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
            self.assertTrue(matching, f"ServiceMonitor {sm['metadata']['name']} selects no Service")
            self.assertTrue(any(p.get("name") == port for s in matching for p in s["spec"]["ports"]), sm["metadata"]["name"])
        rules = one(self.docs, "PrometheusRule", "spreekkamer")["spec"]["groups"][0]["rules"]
        names = {r["alert"] for r in rules}
        for needed in ("SpreekkamerMediaNodeDown", "SpreekkamerJoinsFailing", "SpreekkamerDirectoryErrors", "SpreekkamerPacketLoss"):
            self.assertIn(needed, names)
        for r in rules:
            self.assertTrue(r["expr"].strip(), r["alert"])
            self.assertIn(r["labels"]["severity"], ("warning", "critical"), r["alert"])

    def test_the_grafana_dashboard_is_valid_json_with_queries(self):
        cm = one(self.docs, "ConfigMap", "spreekkamer-grafana-dashboard")
        self.assertEqual(cm["metadata"]["labels"].get("grafana_dashboard"), "1")
        dash = json.loads(cm["data"]["spreekkamer.json"])
        self.assertGreaterEqual(len(dash["panels"]), 6)
        for p in dash["panels"]:
            self.assertTrue(p["targets"], p["title"])
            for t in p["targets"]:
                self.assertIn("spreekkamer_", t["expr"], p["title"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
