"""Dual-stack and IPv6-only Kubernetes clusters on manifests: the cluster's configuration chooses the
families; pods get an address of each; Services follow ipFamilyPolicy, ipFamilies and clusterIPs as the API
server does, and what it refuses is refused with its message, nothing stored; trace and matrix follow the
family asked."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from click.testing import CliRunner

from isthmus.cli.main import cli
from isthmus.compile.source import compiled
from isthmus.dataplane.trace import Tracer
from isthmus.dataplane.trace.matrix import matrix
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import Reconciler, cluster_config, reconcile
from isthmus.kube.translate import TranslationError
from isthmus.model import FloatingIP, ServiceVIP, lookup_kind
from isthmus.store import Ledger, objects
from tests.unit.test_kube import kube, listed, snapshot

DUAL = KubeConfig.model_validate(
    {
        "podCidrs": ["10.32.0.0/12", "fd00:10:32::/56"],
        "serviceCidrs": ["10.254.0.0/16", "fd00:10:254::/112"],
        "externalPools": ["203.0.113.0/24", "2001:db8:113::/64"],
    }
)
SIX = KubeConfig.model_validate(
    {
        "podCidrs": ["fd00:10:32::/56"],
        "serviceCidrs": ["fd00:10:254::/112"],
        "externalPools": ["2001:db8:113::/64"],
    }
)
NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "node-1"},
    "status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.10"}]},
}


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx"}]},
    }


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}], **spec},
    }


def configured(ledger: Ledger, config: KubeConfig) -> None:
    Reconciler(ledger, KubeConfig()).configure(config)
    reconcile(ledger, KubeConfig(), kube(NODE, pod("web")))


def stored(ledger: Ledger, kind: str, name: str) -> Any:
    return objects.list_one(ledger, *_target(kind, name))


def _target(kind: str, name: str) -> Any:
    return lookup_kind(kind), "default", name


def families(addresses: list[Any]) -> list[int]:
    return [ipaddress.ip_address(str(a)).version for a in addresses]


def test_pods_get_an_address_of_each_family_the_primary_first(ledger: Ledger) -> None:
    configured(ledger, DUAL)
    status = stored(ledger, "Pod", "web").body["status"]
    assert families([p["ip"] for p in status["podIPs"]]) == [4, 6]
    assert status["podIP"] == status["podIPs"][0]["ip"]
    assert ipaddress.ip_address(status["podIPs"][1]["ip"]) in ipaddress.ip_network("fd00:10:32::/56")


def test_an_ipv6_only_cluster_gives_ipv6_only(ledger: Ledger) -> None:
    configured(ledger, SIX)
    reconcile(ledger, KubeConfig(), kube(service("web", type="LoadBalancer")))
    status = stored(ledger, "Pod", "web").body["status"]
    assert families([p["ip"] for p in status["podIPs"]]) == [6]
    spec = stored(ledger, "Service", "web").body["spec"]
    assert families(spec["clusterIPs"]) == [6] and spec["ipFamilies"] == ["IPv6"]
    ingress = stored(ledger, "Service", "web").body["status"]["loadBalancer"]["ingress"]
    assert [ipaddress.ip_address(i["ip"]) in ipaddress.ip_network("2001:db8:113::/64") for i in ingress] == [
        True
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, ["IPv4"]),
        ({"ipFamilyPolicy": "SingleStack"}, ["IPv4"]),
        ({"ipFamilies": ["IPv6"]}, ["IPv6"]),
        ({"ipFamilyPolicy": "PreferDualStack"}, ["IPv4", "IPv6"]),
        ({"ipFamilyPolicy": "RequireDualStack"}, ["IPv4", "IPv6"]),
        ({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]}, ["IPv6", "IPv4"]),
        ({"ipFamilyPolicy": "PreferDualStack", "clusterIPs": ["fd00:10:254::50"]}, ["IPv6", "IPv4"]),
    ],
)
def test_services_follow_ip_family_policy_in_a_dual_stack_cluster(
    ledger: Ledger, spec: dict[str, Any], expected: list[str]
) -> None:
    configured(ledger, DUAL)
    reconcile(ledger, KubeConfig(), kube(service("web", type="LoadBalancer", **spec)))
    shown = stored(ledger, "Service", "web").body
    assert shown["spec"]["ipFamilies"] == expected
    assert families(shown["spec"]["clusterIPs"]) == [int(f[-1]) for f in expected]
    assert shown["spec"]["clusterIP"] == shown["spec"]["clusterIPs"][0]
    if "clusterIPs" in spec:
        assert shown["spec"]["clusterIPs"][0] == spec["clusterIPs"][0]
    ingress = [i["ip"] for i in shown["status"]["loadBalancer"]["ingress"]]
    assert families(ingress) == [int(f[-1]) for f in expected]
    vip = listed(ledger, "ServiceVIP", "default")[0]
    assert isinstance(vip, ServiceVIP) and [str(v) for v in vip.spec.vips] == shown["spec"]["clusterIPs"]
    assert families(vip.spec.backends[0].addresses) == [4, 6]  # the pod, by each of its addresses
    fip = listed(ledger, "FloatingIP", "default")[0]
    assert isinstance(fip, FloatingIP) and [str(a) for a in fip.spec.addresses] == ingress


def test_a_service_keeps_its_cluster_ips_and_gains_a_family_when_it_prefers_dual_stack(
    ledger: Ledger,
) -> None:
    configured(ledger, DUAL)
    reconcile(ledger, KubeConfig(), kube(service("web")))
    first = stored(ledger, "Service", "web").body["spec"]["clusterIPs"]
    reconcile(ledger, KubeConfig(), kube(service("web", ipFamilyPolicy="PreferDualStack")))
    now = stored(ledger, "Service", "web").body["spec"]["clusterIPs"]
    assert now[0] == first[0] and families(now) == [4, 6]
    reconcile(ledger, KubeConfig(), kube(service("web", ipFamilyPolicy="SingleStack", ipFamilies=["IPv4"])))
    assert stored(ledger, "Service", "web").body["spec"]["clusterIPs"] == first  # the IPv6 VIP released


@pytest.mark.parametrize(
    ("config", "spec", "message"),
    [
        (
            None,
            {"ipFamilyPolicy": "RequireDualStack"},
            'spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for '
            "dual-stack services",
        ),
        (
            None,
            {"ipFamilies": ["IPv6"]},
            'spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster',
        ),
        (
            SIX,
            {"ipFamilies": ["IPv4"]},
            'spec.ipFamilies[0]: Invalid value: "IPv4": not configured on this cluster',
        ),
        (
            DUAL,
            {"ipFamilies": ["IPv4", "IPv6"]},
            "spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be 'RequireDualStack' or "
            "'PreferDualStack' when multiple IP families are specified",
        ),
        (DUAL, {"ipFamilyPolicy": "Dual"}, 'spec.ipFamilyPolicy: Unsupported value: "Dual"'),
        (DUAL, {"ipFamilies": ["IPv7"]}, 'spec.ipFamilies[0]: Unsupported value: "IPv7"'),
    ],
)
def test_what_the_api_server_refuses_is_refused_and_nothing_is_stored(
    ledger: Ledger, config: KubeConfig | None, spec: dict[str, Any], message: str
) -> None:
    configured(ledger, config or KubeConfig())
    before = snapshot(ledger)
    with pytest.raises(TranslationError) as refused:
        reconcile(ledger, KubeConfig(), kube(service("web", **spec)))
    assert f"Service default/web: {message}" in str(refused.value)
    assert snapshot(ledger) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--pod-cidr", "fd00:10:32::/120"],
            "pod CIDR fd00:10:32::/120 is smaller than one block of its pods (/64)",
        ),
        (["--pod-cidr", "10.32.0.0/12", "--pod-cidr", "10.64.0.0/12"], "pod_cidrs: one CIDR of each family"),
        (
            ["--pod-cidr", "10.32.0.0/12", "--pod-cidr", "fd00:10:32::/56"],
            "service_cidrs (10.254.0.0/16) must be of the families of pod_cidrs",
        ),
        (["--pod-cidr", "10.32.0.0/40"], "pod_cidrs.0: '10.32.0.0/40' is not a CIDR"),
    ],
)
def test_a_bad_cluster_configuration_is_refused_and_nothing_is_stored(
    tmp_path: Any, args: list[str], message: str
) -> None:
    state = ["--state", str(tmp_path / "state")]
    runner = CliRunner()
    assert runner.invoke(cli, [*state, "kube", "config", "--pod-cidr", "10.32.0.0/12"]).exit_code == 0
    refused = runner.invoke(cli, [*state, "kube", "config", *args])
    assert refused.exit_code == 1 and message in refused.output, refused.output
    shown = runner.invoke(cli, [*state, "kube", "config"])
    assert '"10.32.0.0/12"' in shown.output and "fd00" not in shown.output


def test_a_configuration_the_stored_objects_cannot_follow_changes_nothing(ledger: Ledger) -> None:
    configured(ledger, DUAL)
    before = snapshot(ledger)
    tiny = DUAL.model_copy(update={"external_pools": [ipaddress.ip_network("203.0.113.0/30")]})
    reconcile(ledger, KubeConfig(), kube(service("a", type="LoadBalancer")))
    before = snapshot(ledger)
    with pytest.raises(Exception, match=r"203\.0\.113"):
        Reconciler(ledger, KubeConfig()).configure(
            tiny.model_copy(update={"external_pools": [ipaddress.ip_network("198.51.100.0/30")]})
        )
    assert snapshot(ledger) == before
    assert cluster_config(ledger, KubeConfig()) == DUAL


def test_trace_and_matrix_follow_the_family_asked(ledger: Ledger) -> None:
    configured(ledger, DUAL)
    reconcile(ledger, KubeConfig(), kube(pod("client"), service("web", ipFamilyPolicy="RequireDualStack")))
    tracer = Tracer(compiled(ledger)[0])
    vip = listed(ledger, "ServiceVIP", "default")[0]
    client = tracer.endpoint("default", "client")
    for address in vip.spec.vips:
        walked = tracer.trace(client, address, "TCP", 80)
        assert walked.verdict == "allow"
        assert all(ipaddress.ip_address(r["address"]).version == address.version for r in walked.backends)
        assert walked.backends
        assert f"default/client {client.addresses[address.version == 6]}" in walked.hops[0].detail
    six = matrix(tracer, 80, "TCP", "services", ("default",), family=6)
    assert six["destinations"] == ["default/web"] and six["allowed"]["default/client"]["default/web"]


def _namespace(families: str) -> dict[str, Any]:
    annotations = {"isthmus.io/isolation": "namespace", "isthmus.io/ip-families": families}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "default", "annotations": annotations},
    }


def test_a_namespace_annotation_chooses_the_families_of_its_own_networks(ledger: Ledger) -> None:
    Reconciler(ledger, KubeConfig()).configure(DUAL)
    reconcile(ledger, KubeConfig(), kube(NODE, _namespace("IPv6"), pod("web")))
    status = stored(ledger, "Pod", "web").body["status"]
    assert families([p["ip"] for p in status["podIPs"]]) == [6]


@pytest.mark.parametrize(
    ("config", "value"), [(DUAL, "IPv7"), (DUAL, "IPv6,IPv6"), (SIX, "IPv4"), (DUAL, " ")]
)
def test_a_namespace_asking_for_families_the_cluster_has_not_is_refused(
    ledger: Ledger, config: KubeConfig, value: str
) -> None:
    Reconciler(ledger, KubeConfig()).configure(config)
    before = snapshot(ledger)
    with pytest.raises(TranslationError, match=r"annotation isthmus\.io/ip-families is"):
        reconcile(ledger, KubeConfig(), kube(NODE, _namespace(value), pod("web")))
    assert snapshot(ledger) == before


def endpoint_slice(name: str, family: str, *endpoints: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": family,
        "endpoints": list(endpoints),
        "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
    }


def test_endpoint_slices_of_each_family_give_a_service_its_backends(ledger: Ledger) -> None:
    """A pod listed in the slices of both families is one backend with both its addresses; plain addresses
    are backends of their family, ready unless a slice says otherwise; FQDN slices give none, and the
    Endpoints object is not read while the service has slices."""
    configured(ledger, DUAL)
    web = stored(ledger, "Pod", "web").body["status"]["podIPs"]
    ref = {"kind": "Pod", "namespace": "default", "name": "web"}
    docs = [
        service("db", selector=None, ipFamilyPolicy="RequireDualStack"),
        endpoint_slice(
            "db-4", "IPv4", {"addresses": [web[0]["ip"]], "targetRef": ref}, {"addresses": ["198.51.100.5"]}
        ),
        endpoint_slice(
            "db-6",
            "IPv6",
            {"addresses": [web[1]["ip"]], "targetRef": ref},
            {"addresses": ["2001:db8:99::5"], "conditions": {"ready": False}},
        ),
        endpoint_slice("db-name", "FQDN", {"addresses": ["db.example.org"]}),
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "db", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "198.51.100.9"}], "ports": [{"port": 80}]}],
        },
    ]
    reconcile(ledger, KubeConfig(), kube(*docs))
    vip = stored(ledger, "ServiceVIP", "db")
    shown = sorted(([str(a) for a in b.addresses], b.endpoint, b.ready) for b in vip.spec.backends)
    assert shown == [
        ([web[0]["ip"], web[1]["ip"]], "web", True),
        (["198.51.100.5"], None, True),
        (["2001:db8:99::5"], None, False),
    ]
    reconcile(ledger, KubeConfig(), removed=[(lookup_kind("EndpointSlice"), "default", "db-6")])
    vip = stored(ledger, "ServiceVIP", "db")
    assert sorted(str(b.address) for b in vip.spec.backends if b.endpoint is None) == ["198.51.100.5"]
