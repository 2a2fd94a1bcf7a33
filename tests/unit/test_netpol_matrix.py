"""Acceptance: `isthmus matrix` answers the upstream NetworkPolicy e2e cases as a conformant cluster does.

Every expected grid here is restated from the Kubernetes NetworkPolicy API reference and from the
upstream e2e suite (kubernetes/kubernetes test/e2e/network/netpol: network_policy.go in its 9-pod form,
network_legacy.go, reachability.go, model.go), never from what Isthmus prints. Case ids follow
upstream's names; cases marked "spec" have no upstream probe (endPort, policyTypes defaulting edges) and
take their grid from the API reference.

Each case builds the model of `netpol_model` (namespaces x, y, z; pods a, b, c; one Service per pod),
applies the case's policies, then probes `isthmus matrix --to services`: like upstream's probe
(`agnhost connect <ClusterIP of s-<ns>-<pod>>:<port>`), the destination is the Service VIP, so policy must
be judged after DNAT (ipBlock matches the backend pod's IP; named ports resolve on the backend pod).
Cells from a pod to itself are not compared (upstream ignoreLoopback).
"""

from __future__ import annotations

import json
import re
import string
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from isthmus.cli.main import cli
from tests.unit.netpol_model import (
    ALL_PODS,
    NAMESPACES,
    NODES,
    Reachability,
    grid_diff,
    model_manifests,
    service_name,
    split,
)

Expectation = Callable[[Reachability], object]


def _all_allowed(r: Reachability) -> object:
    return r


@dataclass(frozen=True)
class Policy:
    """A NetworkPolicy: `spec` is YAML text, in which $x_a .. $z_c stand for the pods' IPs."""

    name: str
    spec: str
    namespace: str = "x"

    def document(self, ips: Mapping[str, str], family: int = 4) -> dict[str, Any]:
        """The policy, with pod addresses from `ips`; in IPv6 a host is a /128 (the wide /4 with host bits
        set stays: it holds every pod of either family)."""
        text = textwrap.dedent(self.spec)
        if family == 6:
            text = re.sub(r"(\$\w+)/32\b", r"\1/128", text)
        if "$" in text:
            text = string.Template(text).substitute(ips)
        spec = yaml.safe_load(text)
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }


@dataclass(frozen=True)
class Probe:
    """One `isthmus matrix` run and the grid it must give: `expect` edits NewReachability(all pods, true)."""

    port: int
    expect: Expectation = _all_allowed
    protocol: str = "TCP"
    to: str = "services"


@dataclass(frozen=True)
class Step:
    """Apply `policies` (same name = replace, as upstream UpdatePolicy), delete `delete` ("ns/name"),
    or re-apply the model with new labels (`pod_labels` / `namespace_labels`); then run the probes."""

    probes: tuple[Probe, ...]
    policies: tuple[Policy, ...] = ()
    delete: tuple[str, ...] = ()
    pod_labels: Mapping[str, Mapping[str, str]] | None = None
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None


@dataclass(frozen=True)
class Case:
    id: str
    source: str  # where the case and its expectations come from
    ports: tuple[int, ...]
    protocols: tuple[str, ...]
    steps: tuple[Step, ...]
    marks: tuple[Any, ...] = field(default=())


def one_step(*policies: Policy, probes: tuple[Probe, ...]) -> tuple[Step, ...]:
    return (Step(probes=probes, policies=policies),)


E2E = "network_policy.go: "
LEGACY = "network_legacy.go: "
SPEC = "spec (NetworkPolicy API reference): "

DENY_INGRESS_NS = "podSelector: {}\npolicyTypes: [Ingress]"


def into_x_denied(r: Reachability) -> object:
    return r.expect_peer(None, None, "x", None, False)


def out_of_x_denied(r: Reachability) -> object:
    return r.expect_peer("x", None, None, None, False)


def only_y_into_xa(r: Reachability) -> object:
    """x/a accepts namespace y only (upstream: ExpectPeer x->x/a false, z->x/a false)."""
    return r.expect_peer("x", None, "x", "a", False).expect_peer("z", None, "x", "a", False)


CASES: list[Case] = [
    # --- NetworkPolicy between server and client (TCP) ---------------------------------------------
    Case(
        "default-deny-ingress",
        E2E + "should support a 'default-deny-ingress' policy",
        (80,),
        ("TCP",),
        one_step(Policy("deny-ingress", DENY_INGRESS_NS), probes=(Probe(80, into_x_denied),)),
    ),
    Case(
        "default-deny-all",
        E2E + "should support a 'default-deny-all' policy",
        (80,),
        ("TCP",),
        one_step(
            Policy("deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]"),
            probes=(
                Probe(
                    80,
                    lambda r: r.expect_peer(None, None, "x", None, False).expect_peer(
                        "x", None, None, None, False
                    ),
                ),
            ),
        ),
    ),
    Case(
        "podselector-within-namespace",
        E2E + "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "x-a-allows-x-b",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{podSelector: {matchLabels: {pod: b}}}]
                """,
            ),
            probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),),
        ),
    ),
    Case(
        "allow-ingress-for-target",
        E2E + "should enforce policy to allow ingress traffic for a target",
        (80,),
        ("TCP",),
        one_step(
            Policy("deny-all", DENY_INGRESS_NS),
            Policy(
                "allow-all-to-a",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{podSelector: {}, namespaceSelector: {}}]
                """,
            ),
            probes=(
                Probe(
                    80,
                    lambda r: (
                        r.expect_all_ingress("x/a", True)
                        .expect_all_ingress("x/b", False)
                        .expect_all_ingress("x/c", False)
                    ),
                ),
            ),
        ),
    ),
    Case(
        "ingress-from-all-namespaces",
        E2E + "should enforce policy to allow ingress traffic from pods in all namespaces",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-from-another-ns",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{namespaceSelector: {matchLabels: {}}}]
                """,
            ),
            probes=(Probe(80),),
        ),
    ),
    Case(
        "nsselector-ns-label",
        E2E + "should enforce policy to allow traffic only from a different namespace, based on "
        "NamespaceSelector (with the older `ns` label, as cyclonus)",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-client-a-via-ns-selector",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
                """,
            ),
            probes=(Probe(80, only_y_into_xa),),
        ),
    ),
    Case(
        "nsselector-default-ns-label",
        E2E + "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using "
        "default ns label",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-client-a-via-ns-selector-for-immutable-ns-label",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
                """,
            ),
            probes=(Probe(80, only_y_into_xa),),
        ),
    ),
    Case(
        "podselector-matchexpressions",
        E2E + "should enforce policy based on PodSelector with MatchExpressions",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "x-a-allows-x-b",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]
                """,
            ),
            probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),),
        ),
    ),
    Case(
        "nsselector-matchexpressions",
        E2E + "should enforce policy based on NamespaceSelector with MatchExpressions",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-ns-y-match-selector",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from:
                  - namespaceSelector:
                      matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]
                """,
            ),
            probes=(Probe(80, only_y_into_xa),),
        ),
    ),
    Case(
        "podselector-or-nsselector",
        E2E + "should enforce policy based on PodSelector or NamespaceSelector (two peers: OR)",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-ns-y-match-selector",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from:
                  - namespaceSelector:
                      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
                  - podSelector: {matchLabels: {pod: b}}
                """,
            ),
            probes=(Probe(80, lambda r: r.expect("x/a", "x/a", False).expect("x/c", "x/a", False)),),
        ),
    ),
    Case(
        "podselector-and-nsselector",
        E2E + "should enforce policy based on PodSelector and NamespaceSelector (one peer: AND)",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-ns-y-podselector-and-nsselector",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from:
                  - namespaceSelector:
                      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
                    podSelector: {matchLabels: {pod: b}}
                """,
            ),
            probes=(
                Probe(
                    80,
                    lambda r: (
                        r.expect_all_ingress("x/a", False)
                        .expect("y/b", "x/a", True)
                        .expect("z/b", "x/a", True)
                    ),
                ),
            ),
        ),
    ),
    Case(
        "multiple-podselectors-and-nsselectors",
        E2E + "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-ns-y-z-pod-b-c",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from:
                  - namespaceSelector:
                      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
                    podSelector:
                      matchExpressions: [{key: pod, operator: In, values: [b, c]}]
                """,
            ),
            probes=(
                Probe(
                    80,
                    lambda r: (
                        r.expect_peer("x", None, "x", "a", False)
                        .expect("y/a", "x/a", False)
                        .expect("z/a", "x/a", False)
                    ),
                ),
            ),
        ),
    ),
    Case(
        "any-podselectors",
        E2E + "should enforce policy based on any PodSelectors",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-ns-x-pod-b-c",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]
                """,
            ),
            probes=(
                Probe(
                    80,
                    lambda r: (
                        r.expect_all_ingress("x/a", False)
                        .expect("x/b", "x/a", True)
                        .expect("x/c", "x/a", True)
                    ),
                ),
            ),
        ),
    ),
    Case(
        "pod-in-other-namespace",
        E2E + "should enforce policy to allow traffic only from a pod in a different namespace based on "
        "PodSelector and NamespaceSelector",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-ns-y-pod-a-via-namespace-pod-selector",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from:
                  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                    podSelector: {matchLabels: {pod: a}}
                """,
            ),
            probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False).expect("y/a", "x/a", True)),),
        ),
    ),
    Case(
        "ports",
        E2E + "should enforce policy based on Ports",
        (81,),
        ("TCP",),
        one_step(
            Policy(
                "allow-client-a-via-ns-selector",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
                  ports: [{port: 81, protocol: TCP}]
                """,
            ),
            probes=(
                Probe(
                    81,
                    lambda r: (
                        r.expect_peer("x", None, "x", "a", False)
                        .expect_peer("y", None, "x", "a", True)
                        .expect_peer("z", None, "x", "a", False)
                    ),
                ),
            ),
        ),
    ),
    Case(
        "stacked-policies-additive",
        E2E + "should enforce multiple, stacked policies with overlapping podSelectors",
        (80, 81),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "allow-client-a-via-ns-selector",
                        """
                        podSelector: {matchLabels: {pod: a}}
                        policyTypes: [Ingress]
                        ingress:
                        - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
                          ports: [{port: 81, protocol: TCP}]
                        """,
                    ),
                ),
                probes=(
                    Probe(81, only_y_into_xa),
                    Probe(80, lambda r: r.expect_all_ingress("x/a", False)),
                ),
            ),
            Step(
                policies=(
                    Policy(
                        "allow-client-a-via-ns-selector-80",
                        """
                        podSelector: {matchLabels: {pod: a}}
                        policyTypes: [Ingress]
                        ingress:
                        - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
                          ports: [{port: 80, protocol: TCP}]
                        """,
                    ),
                ),
                probes=(Probe(80, only_y_into_xa), Probe(81, only_y_into_xa)),
            ),
        ),
    ),
    Case(
        "allow-all",
        E2E + "should support allow-all policy",
        (80, 81),
        ("TCP",),
        one_step(
            Policy("allow-all", "podSelector: {}\npolicyTypes: [Ingress]\ningress: [{}]"),
            probes=(Probe(80), Probe(81)),
        ),
    ),
    Case(
        "named-port-ingress",
        E2E + "should allow ingress access on one named port",
        (80, 81),
        ("TCP",),
        one_step(
            Policy(
                "allow-all",
                """
                podSelector: {}
                policyTypes: [Ingress]
                ingress:
                - ports: [{port: serve-81-tcp}]
                """,
            ),
            probes=(Probe(81), Probe(80, into_x_denied)),
        ),
    ),
    Case(
        "named-port-ingress-from-namespace",
        E2E + "should allow ingress access from namespace on one named port",
        (80, 81),
        ("TCP",),
        one_step(
            Policy(
                "allow-client-a-via-ns-selector-80",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
                  ports: [{port: serve-80-tcp, protocol: TCP}]
                """,
            ),
            probes=(Probe(80, only_y_into_xa), Probe(81, lambda r: r.expect_all_ingress("x/a", False))),
        ),
    ),
    Case(
        "named-port-egress",
        E2E + "should allow egress access on one named port (resolved on the destination pod)",
        (80, 81),
        ("TCP",),
        one_step(
            Policy(
                "allow-egress",
                """
                podSelector: {}
                policyTypes: [Egress]
                egress:
                - ports: [{port: serve-80-tcp}]
                """,
            ),
            probes=(Probe(80), Probe(81, out_of_x_denied)),
        ),
    ),
    Case(
        "updated-policy-replaces",
        E2E + "should enforce updated policy (allow-all updated in place to deny-all)",
        (81,),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "allow-all-mutate-to-deny-all",
                        "podSelector: {}\npolicyTypes: [Ingress]\ningress: [{}]",
                    ),
                ),
                probes=(Probe(81),),
            ),
            Step(
                policies=(
                    Policy(
                        "allow-all-mutate-to-deny-all", "podSelector: {}\npolicyTypes: [Ingress]\ningress: []"
                    ),
                ),
                probes=(Probe(81, into_x_denied),),
            ),
        ),
    ),
    Case(
        "updated-namespace-label-added",
        E2E + "should allow ingress access from updated namespace",
        (80,),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "allow-client-a-via-ns-selector",
                        """
                        podSelector: {matchLabels: {pod: a}}
                        policyTypes: [Ingress]
                        ingress:
                        - from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]
                        """,
                    ),
                ),
                probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False)),),
            ),
            Step(
                namespace_labels={"y": {"ns2": "updated"}},
                probes=(
                    Probe(
                        80,
                        lambda r: r.expect_all_ingress("x/a", False).expect_peer("y", None, None, None, True),
                    ),
                ),
            ),
        ),
    ),
    Case(
        "updated-namespace-label-value-changed",
        LEGACY + "should allow ingress access from updated namespace (a label value changed in place)",
        (80,),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "allow-ns-b-via-namespace-selector",
                        """
                        podSelector: {matchLabels: {pod: a}}
                        ingress:
                        - from: [{namespaceSelector: {matchLabels: {ns: y-updated}}}]
                        """,
                    ),
                ),
                probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False)),),
            ),
            Step(
                namespace_labels={"y": {"ns": "y-updated"}},
                probes=(
                    Probe(
                        80,
                        lambda r: r.expect_all_ingress("x/a", False).expect_peer("y", None, "x", "a", True),
                    ),
                ),
            ),
        ),
    ),
    Case(
        "updated-pod-label-added",
        E2E + "should allow ingress access from updated pod",
        (80,),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "allow-client-a-via-pod-selector",
                        """
                        podSelector: {matchLabels: {pod: a}}
                        policyTypes: [Ingress]
                        ingress:
                        - from: [{podSelector: {matchLabels: {pod: b, pod2: updated}}}]
                        """,
                    ),
                ),
                probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False)),),
            ),
            Step(
                pod_labels={"x/b": {"pod": "b", "pod2": "updated"}},
                probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),),
            ),
        ),
    ),
    Case(
        "deny-ingress-from-other-namespaces",
        E2E + "should deny ingress from pods on other namespaces",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "deny-empty-policy",
                """
                podSelector: {}
                policyTypes: [Ingress]
                ingress:
                - from: [{podSelector: {matchLabels: {}}}]
                """,
            ),
            probes=(
                Probe(
                    80,
                    lambda r: r.expect_peer("y", None, "x", None, False).expect_peer(
                        "z", None, "x", None, False
                    ),
                ),
            ),
        ),
    ),
    Case(
        "deny-ingress-to-updated-pod",
        E2E + "should deny ingress access to updated pod",
        (80,),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "deny-ingress-via-label-selector",
                        "podSelector: {matchLabels: {target: isolated}}\npolicyTypes: [Ingress]",
                    ),
                ),
                probes=(Probe(80),),
            ),
            Step(
                pod_labels={"x/a": {"pod": "a", "target": "isolated"}},
                probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False)),),
            ),
        ),
    ),
    Case(
        "deny-egress-podselector",
        E2E + "should deny egress from pods based on PodSelector",
        (80,),
        ("TCP",),
        one_step(
            Policy("deny-egress-pod-a", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]"),
            probes=(Probe(80, lambda r: r.expect_all_egress("x/a", False)),),
        ),
    ),
    Case(
        "deny-egress-namespace",
        E2E + "should deny egress from all pods in a namespace (egress-only deny-all)",
        (80,),
        ("TCP",),
        one_step(
            Policy("deny-egress-ns-x", "podSelector: {}\npolicyTypes: [Egress]"),
            probes=(Probe(80, out_of_x_denied),),
        ),
    ),
    Case(
        "ingress-and-egress-together",
        E2E + "should work with Ingress, Egress specified together",
        (80, 81),
        ("TCP",),
        one_step(
            Policy(
                "allow-client-a-via-pod-selector",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Egress, Ingress]
                ingress:
                - from: [{podSelector: {matchLabels: {pod: b}}}]
                egress:
                - ports: [{port: 80}]
                """,
            ),
            probes=(
                Probe(80, lambda r: r.expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
                Probe(
                    81,
                    lambda r: (
                        r.expect_all_ingress("x/a", False)
                        .expect_all_egress("x/a", False)
                        .expect("x/b", "x/a", True)
                    ),
                ),
            ),
        ),
    ),
    Case(
        "egress-denied-on-client-side",
        E2E + "should support denying of egress traffic on the client side (even if the server explicitly "
        "allows this traffic)",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-to-ns-y-pod-a",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Egress]
                egress:
                - to:
                  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                    podSelector: {matchLabels: {pod: a}}
                """,
            ),
            *(
                Policy(
                    f"allow-from-xa-on-y{pod}-match-selector",
                    f"""
                    podSelector: {{matchLabels: {{pod: {pod}}}}}
                    policyTypes: [Ingress]
                    ingress:
                    - from:
                      - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: x}}}}
                        podSelector: {{matchLabels: {{pod: a}}}}
                    """,
                    namespace="y",
                )
                for pod in ("a", "b")
            ),
            probes=(
                Probe(
                    80,
                    lambda r: (
                        r.expect_peer("x", "a", None, None, False)
                        .expect_peer(None, None, "y", "a", False)
                        .expect_peer("x", "a", "y", "a", True)
                        .expect_peer(None, None, "y", "b", False)
                    ),
                ),
            ),
        ),
    ),
    Case(
        "egress-to-pod-in-other-namespace",
        E2E + "should enforce egress policy allowing traffic to a server in a different namespace based on "
        "PodSelector and NamespaceSelector",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-to-ns-y-pod-a",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Egress]
                egress:
                - to:
                  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                    podSelector: {matchLabels: {pod: a}}
                """,
            ),
            probes=(Probe(80, lambda r: r.expect_all_egress("x/a", False).expect("x/a", "y/a", True)),),
        ),
    ),
    Case(
        "egress-to-namespace",
        E2E + "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label "
        "(tcp-nsselector-matchexpressions-default-ns-label-egress: an egress policy)",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-ns-y-match-selector-for-immutable-ns-label",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Egress]
                egress:
                - to:
                  - namespaceSelector:
                      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]
                """,
            ),
            probes=(Probe(80, lambda r: r.expect_peer("x", "a", "y", None, False)),),
        ),
    ),
    Case(
        "ingress-any-port-on-protocol",
        E2E + "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
        (80,),
        ("TCP", "UDP"),
        one_step(
            Policy(
                "allow-ingress-by-proto",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - ports: [{protocol: TCP}]
                """,
            ),
            probes=(
                Probe(80),
                Probe(80, lambda r: r.expect_peer(None, None, "x", "a", False), protocol="UDP"),
            ),
        ),
    ),
    Case(
        "ingress-allow-all-precedence",
        E2E + "should enforce multiple ingress policies with ingress allow-all policy taking precedence "
        "(only 81/TCP is served)",
        (81,),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "allow-ingress-port-80",
                        "podSelector: {}\npolicyTypes: [Ingress]\ningress:\n- ports: [{port: 80}]",
                    ),
                ),
                probes=(Probe(81, into_x_denied),),
            ),
            Step(
                policies=(Policy("allow-ingress", "podSelector: {}\npolicyTypes: [Ingress]\ningress: [{}]"),),
                probes=(Probe(81),),
            ),
        ),
    ),
    Case(
        "egress-allow-all-precedence",
        E2E + "should enforce multiple egress policies with egress allow-all policy taking precedence",
        (81,),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "allow-egress-port-80",
                        "podSelector: {}\npolicyTypes: [Egress]\negress:\n- ports: [{port: 80}]",
                    ),
                ),
                probes=(Probe(81, out_of_x_denied),),
            ),
            Step(
                policies=(Policy("allow-egress", "podSelector: {}\npolicyTypes: [Egress]\negress: [{}]"),),
                probes=(Probe(81),),
            ),
        ),
    ),
    Case(
        "policies-deleted",
        E2E + "should stop enforcing policies after they are deleted",
        (80,),
        ("TCP",),
        (
            Step(
                policies=(Policy("deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]"),),
                probes=(
                    Probe(
                        80,
                        lambda r: r.expect_peer("x", None, None, None, False).expect_peer(
                            None, None, "x", None, False
                        ),
                    ),
                ),
            ),
            Step(delete=("x/deny-all",), probes=(Probe(80),)),
        ),
    ),
    Case(
        "egress-cidr",
        E2E + "should allow egress access to server in CIDR block (tcp-egress-cidr: a pod IP, probed "
        "through the ClusterIP, so matched after DNAT)",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-client-a-via-cidr-egress-rule",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Egress]
                egress:
                - to: [{ipBlock: {cidr: $y_b/32}}]
                """,
            ),
            probes=(
                Probe(80, lambda r: r.expect_all_egress("x/a", False).expect("x/a", "y/b", True)),
                Probe(80, lambda r: r.expect_all_egress("x/a", False).expect("x/a", "y/b", True), to="pods"),
            ),
        ),
    ),
    Case(
        "egress-cidr-except",
        E2E + "should enforce except clause while egress access to server in CIDR block (9-pod version: "
        "cidr <x/a IP>/4 with host bits set, except <x/b IP>/32)",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-client-a-via-cidr-egress-rule",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Egress]
                egress:
                - to: [{ipBlock: {cidr: $x_a/4, except: [$x_b/32]}}]
                """,
            ),
            probes=(Probe(80, lambda r: r.expect("x/a", "x/b", False)),),
        ),
    ),
    Case(
        "egress-cidr-except-overlap-update",
        E2E + "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed (step 2 "
        "updates the policy of the same name: it replaces it)",
        (80,),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "allow-client-a-via-cidr-egress-rule",
                        """
                        podSelector: {matchLabels: {pod: a}}
                        policyTypes: [Egress]
                        egress:
                        - to: [{ipBlock: {cidr: $x_a/4, except: [$x_b/32]}}]
                        """,
                    ),
                ),
                probes=(Probe(80, lambda r: r.expect("x/a", "x/b", False)),),
            ),
            Step(
                policies=(
                    Policy(
                        "allow-client-a-via-cidr-egress-rule",
                        """
                        podSelector: {matchLabels: {pod: a}}
                        policyTypes: [Egress]
                        egress:
                        - to: [{ipBlock: {cidr: $x_b/32}}]
                        """,
                    ),
                ),
                probes=(Probe(80, lambda r: r.expect_all_egress("x/a", False).expect("x/a", "x/b", True)),),
            ),
        ),
    ),
    Case(
        "ingress-egress-independent",
        E2E + "should enforce policies to check ingress and egress policies can be controlled "
        "independently based on PodSelector",
        (80,),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "allow-egress-for-target",
                        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: [{}]",
                    ),
                ),
                probes=(Probe(80),),
            ),
            Step(
                policies=(
                    Policy(
                        "deny-ingress-via-label-selector",
                        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]",
                    ),
                ),
                probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False)),),
            ),
        ),
    ),
    Case(
        "sctp-not-treated-as-tcp",
        E2E + "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin "
        "doesn't support SCTP",
        (81,),
        ("TCP",),
        one_step(
            Policy("deny-ingress", DENY_INGRESS_NS),
            Policy(
                "allow-only-sctp-ingress-on-port-81",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - ports: [{port: 81, protocol: SCTP}]
                """,
            ),
            probes=(Probe(81, into_x_denied),),
        ),
    ),
    Case(
        "isolate-pods-selected-by-sctp-policy",
        E2E + "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin "
        "doesn't support SCTP",
        (81,),
        ("TCP",),
        one_step(
            Policy(
                "allow-only-sctp-ingress-on-port-80",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - ports: [{port: 80, protocol: SCTP}]
                """,
            ),
            probes=(Probe(81, lambda r: r.expect_all_ingress("x/a", False)),),
        ),
    ),
    Case(
        "udp-policy-not-tcp",
        E2E + "should not allow access by TCP when a policy specifies only UDP",
        (81,),
        ("TCP",),
        one_step(
            Policy(
                "allow-only-udp-ingress-on-port-81",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - ports: [{port: 81, protocol: UDP}]
                """,
            ),
            probes=(Probe(81, lambda r: r.expect_all_ingress("x/a", False)),),
        ),
    ),
    # --- Netpol [LinuxOnly]: UDP ------------------------------------------------------------------
    Case(
        "udp-default-deny-ingress",
        E2E + "UDP: should support a 'default-deny-ingress' policy",
        (80,),
        ("UDP",),
        one_step(Policy("deny-all", DENY_INGRESS_NS), probes=(Probe(80, into_x_denied, protocol="UDP"),)),
    ),
    Case(
        "udp-ports",
        E2E + "UDP: should enforce policy based on Ports",
        (81,),
        ("UDP",),
        one_step(
            Policy(
                "allow-ingress-on-port-81-ns-x",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
                  ports: [{port: 81, protocol: UDP}]
                """,
            ),
            probes=(Probe(81, only_y_into_xa, protocol="UDP"),),
        ),
    ),
    Case(
        "udp-pod-in-other-namespace",
        E2E + "UDP: should enforce policy to allow traffic only from a pod in a different namespace based on "
        "PodSelector and NamespaceSelector",
        (80,),
        ("UDP",),
        one_step(
            Policy(
                "allow-ns-y-pod-a-via-namespace-pod-selector",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from:
                  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                    podSelector: {matchLabels: {pod: a}}
                """,
            ),
            probes=(
                Probe(
                    80,
                    lambda r: r.expect_all_ingress("x/a", False).expect("y/a", "x/a", True),
                    protocol="UDP",
                ),
            ),
        ),
    ),
    Case(
        "udp-deny-egress-namespace-replies-allowed",
        SPEC + "egress isolation of x denies UDP from x, while UDP into x still gets its replies (reply "
        "traffic of an allowed connection is implicitly allowed)",
        (80,),
        ("UDP",),
        one_step(
            Policy("deny-egress-ns-x", "podSelector: {}\npolicyTypes: [Egress]"),
            probes=(Probe(80, out_of_x_denied, protocol="UDP"),),
        ),
    ),
    # --- Netpol [Feature:SCTPConnectivity]: SCTP --------------------------------------------------
    Case(
        "sctp-default-deny-ingress",
        E2E + "SCTP: should support a 'default-deny-ingress' policy",
        (80,),
        ("SCTP",),
        one_step(Policy("deny-all", DENY_INGRESS_NS), probes=(Probe(80, into_x_denied, protocol="SCTP"),)),
    ),
    Case(
        "sctp-ports",
        E2E + "SCTP: should enforce policy based on Ports",
        (81,),
        ("SCTP",),
        one_step(
            Policy(
                "allow-ingress-on-port-81-ns-x",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
                  ports: [{port: 81, protocol: SCTP}]
                """,
            ),
            probes=(Probe(81, only_y_into_xa, protocol="SCTP"),),
        ),
    ),
    Case(
        "sctp-pod-in-other-namespace",
        E2E
        + "SCTP: should enforce policy to allow traffic only from a pod in a different namespace based on "
        "PodSelector and NamespaceSelector",
        (80,),
        ("SCTP",),
        one_step(
            Policy(
                "allow-ns-y-pod-a-via-namespace-pod-selector",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from:
                  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                    podSelector: {matchLabels: {pod: a}}
                """,
            ),
            probes=(
                Probe(
                    80,
                    lambda r: r.expect_all_ingress("x/a", False).expect("y/a", "x/a", True),
                    protocol="SCTP",
                ),
            ),
        ),
    ),
    # --- The API reference, where upstream e2e never probes ----------------------------------------
    Case(
        "protocol-defaults-to-tcp",
        SPEC + "NetworkPolicyPort.protocol defaults to TCP: a port without protocol allows TCP 80, and UDP "
        "80 into the isolated pod stays denied",
        (80,),
        ("TCP", "UDP"),
        one_step(
            Policy(
                "allow-80-no-protocol",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - ports: [{port: 80}]
                """,
            ),
            probes=(
                Probe(80),
                Probe(80, lambda r: r.expect_all_ingress("x/a", False), protocol="UDP"),
            ),
        ),
    ),
    Case(
        "endport-range",
        SPEC + "endPort: port 80 endPort 81 allows 80 through 81 inclusive, not 82 (cyclonus end-port)",
        (80, 81, 82),
        ("TCP",),
        one_step(
            Policy(
                "allow-80-81-from-y",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
                  ports: [{port: 80, endPort: 81, protocol: TCP}]
                """,
            ),
            probes=(
                Probe(80, only_y_into_xa),
                Probe(81, only_y_into_xa),
                Probe(82, lambda r: r.expect_all_ingress("x/a", False)),
            ),
        ),
    ),
    Case(
        "endport-equal-to-port",
        SPEC + "endPort equal to port: the range is that one port",
        (80, 81),
        ("TCP",),
        one_step(
            Policy(
                "allow-80-80-from-y",
                """
                podSelector: {matchLabels: {pod: a}}
                policyTypes: [Ingress]
                ingress:
                - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
                  ports: [{port: 80, endPort: 80}]
                """,
            ),
            probes=(Probe(80, only_y_into_xa), Probe(81, lambda r: r.expect_all_ingress("x/a", False))),
        ),
    ),
    Case(
        "policytypes-default-egress-only",
        SPEC + "policyTypes unset with only egress rules defaults to [Ingress, Egress]: the selected pod is "
        "isolated for ingress too (older suite)",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "egress-to-y-no-policytypes",
                """
                podSelector: {matchLabels: {pod: a}}
                egress:
                - to: [{namespaceSelector: {matchLabels: {ns: y}}}]
                """,
            ),
            probes=(
                Probe(
                    80,
                    lambda r: (
                        r.expect_all_ingress("x/a", False)
                        .expect_all_egress("x/a", False)
                        .expect_peer("x", "a", "y", None, True)
                    ),
                ),
            ),
        ),
    ),
    Case(
        "policytypes-default-legacy-both",
        LEGACY + "should work with Ingress,Egress specified together, written as a legacy policy without "
        "policyTypes (egress rules present: [Ingress, Egress])",
        (80, 81),
        ("TCP",),
        one_step(
            Policy(
                "legacy-ingress-egress",
                """
                podSelector: {matchLabels: {pod: a}}
                ingress:
                - from: [{podSelector: {matchLabels: {pod: b}}}]
                egress:
                - ports: [{port: 80}]
                """,
            ),
            probes=(
                Probe(80, lambda r: r.expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
                Probe(
                    81,
                    lambda r: (
                        r.expect_all_ingress("x/a", False)
                        .expect_all_egress("x/a", False)
                        .expect("x/b", "x/a", True)
                    ),
                ),
            ),
        ),
    ),
    Case(
        "policytypes-default-empty-egress",
        SPEC
        + "policyTypes unset with an empty egress list defaults to [Ingress] only: egress is not isolated",
        (80,),
        ("TCP",),
        one_step(
            Policy("legacy-empty-egress", "podSelector: {matchLabels: {pod: a}}\negress: []"),
            probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False)),),
        ),
    ),
    Case(
        "legacy-default-deny-ingress",
        LEGACY + "should support a 'default-deny-ingress' policy (no policyTypes, ingress: [])",
        (80,),
        ("TCP",),
        one_step(Policy("deny-ingress", "podSelector: {}\ningress: []"), probes=(Probe(80, into_x_denied),)),
    ),
    Case(
        "selector-doesnotexist",
        LEGACY + "should allow ingress access from updated pod (DoesNotExist; the client relabelled to {}; "
        "probed pod to pod, as the relabelled pod leaves its Service)",
        (80,),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "allow-pod-b-via-pod-selector",
                        """
                        podSelector: {matchLabels: {pod: a}}
                        ingress:
                        - from: [{podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}}]
                        """,
                    ),
                ),
                probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False), to="pods"),),
            ),
            Step(
                pod_labels={"x/b": {}},
                probes=(
                    Probe(
                        80, lambda r: r.expect_all_ingress("x/a", False).expect("x/b", "x/a", True), to="pods"
                    ),
                ),
            ),
        ),
    ),
    Case(
        "selector-exists",
        LEGACY + "should deny ingress access to updated pod (matchLabels and an Exists expression)",
        (80,),
        ("TCP",),
        (
            Step(
                policies=(
                    Policy(
                        "deny-ingress-via-isolated-label-selector",
                        """
                        podSelector:
                          matchLabels: {pod: a}
                          matchExpressions: [{key: isolated, operator: Exists}]
                        policyTypes: [Ingress]
                        ingress: []
                        """,
                    ),
                ),
                probes=(Probe(80),),
            ),
            Step(
                pod_labels={"x/a": {"pod": "a", "isolated": ""}},
                probes=(Probe(80, lambda r: r.expect_all_ingress("x/a", False)),),
            ),
        ),
    ),
    Case(
        "nsselector-notin-missing-key",
        LEGACY + "should enforce policy based on NamespaceSelector with MatchExpressions (NotIn also "
        "matches a namespace without the key: x has no `env` label)",
        (80,),
        ("TCP",),
        (
            Step(
                namespace_labels={"y": {"env": "dev"}, "z": {"env": "prod"}},
                policies=(
                    Policy(
                        "allow-any-ns-but-prod",
                        """
                        podSelector: {matchLabels: {pod: a}}
                        ingress:
                        - from:
                          - namespaceSelector:
                              matchExpressions: [{key: env, operator: NotIn, values: [prod]}]
                        """,
                    ),
                ),
                probes=(Probe(80, lambda r: r.expect_peer("z", None, "x", "a", False)),),
            ),
        ),
    ),
    # --- JSON null as kube-apiserver 1.20 stores it (checked against a real one) -----------------------
    Case(
        "null-podselector",
        SPEC + "a null spec.podSelector is stored as {}: the policy selects every pod of x",
        (80,),
        ("TCP",),
        one_step(
            Policy("deny-ingress", "podSelector:\npolicyTypes: [Ingress]"), probes=(Probe(80, into_x_denied),)
        ),
    ),
    Case(
        "null-peer-podselector",
        SPEC
        + "a null podSelector in a peer is no podSelector: the namespaceSelector alone picks the sources",
        (80,),
        ("TCP",),
        one_step(
            Policy(
                "allow-y-into-a",
                """
                podSelector: {matchLabels: {pod: a}}
                ingress:
                - from:
                  - namespaceSelector: {matchLabels: {ns: y}}
                    podSelector:
                  ports:
                """,
            ),
            probes=(Probe(80, only_y_into_xa),),
        ),
    ),
    Case(
        "null-ingress-rule",
        SPEC + "a null item of ingress is an empty rule, which allows everything; a null egress is none",
        (80,),
        ("TCP",),
        one_step(
            Policy("allow-all-into-a", "podSelector: {matchLabels: {pod: a}}\ningress:\n-\negress:"),
            probes=(Probe(80),),
        ),
    ),
]


# ------------------------------------------------------------------------------------------------------
# running a case


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def ok(result: Result, what: str) -> Result:
    if result.exit_code != 0:
        detail = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            detail += f"\n{type(result.exception).__name__}: {result.exception}"
        pytest.fail(f"`isthmus {what}` exited {result.exit_code}:\n{detail}", pytrace=False)
    return result


def pod_ips(state: Path) -> dict[str, str]:
    """{"x_a": "10.32.0.2", ...}: the pods' addresses as `isthmus get pods -o json` shows them."""
    ips: dict[str, str] = {}
    for namespace in NAMESPACES:
        data = json.loads(
            ok(run("--state", str(state), "get", "pods", "-n", namespace, "-o", "json"), "get").stdout
        )
        items = data["items"] if data.get("kind") == "List" else [data]
        for item in items:
            ip = (item.get("status") or {}).get("podIP")
            assert ip, f"pod {namespace}/{item['metadata']['name']} has no status.podIP"
            ips[f"{namespace}_{item['metadata']['name']}"] = ip
    missing = {p.replace("/", "_") for p in ALL_PODS} - ips.keys()
    assert not missing, f"pods without an address: {sorted(missing)}"
    return ips


def observed_grid(state: Path, probe: Probe) -> dict[str, dict[str, bool]]:
    """Run `isthmus matrix` and map its answer onto model pods (a Service s-x-a stands for pod x/a)."""
    args = ["--state", str(state), "matrix", "--port", str(probe.port), "--protocol", probe.protocol]
    args += ["--to", probe.to, *(a for ns in NAMESPACES for a in ("-n", ns)), "-o", "json"]
    result = ok(run(*args), " ".join(args[2:]))
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"`isthmus matrix -o json` printed no JSON ({exc}):\n{result.stdout}", pytrace=False)
    assert (data.get("port"), data.get("protocol"), data.get("to")) == (probe.port, probe.protocol, probe.to)

    if probe.to == "services":
        names = {f"{split(p)[0]}/{service_name(p)}": p for p in ALL_PODS}
    else:
        names = {p: p for p in ALL_PODS}
    assert sorted(data["sources"]) == sorted(ALL_PODS), f"sources: {data['sources']}"
    assert sorted(data["destinations"]) == sorted(names), f"destinations: {data['destinations']}"
    grid: dict[str, dict[str, bool]] = {}
    for source, row in data["allowed"].items():
        for destination, allowed in row.items():
            assert isinstance(allowed, bool), f"allowed[{source}][{destination}] = {allowed!r}"
            if destination in names:
                grid.setdefault(source, {})[names[destination]] = allowed
    return grid


def write(path: Path, docs: list[dict[str, Any]] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(docs if isinstance(docs, str) else yaml.safe_dump_all(docs, sort_keys=False))
    return path


def run_case(case: Case, tmp_path: Path) -> None:
    state = tmp_path / "state"
    pod_labels: Mapping[str, Mapping[str, str]] | None = None
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None
    ips: dict[str, str] | None = None
    failures: list[str] = []
    applied: list[str] = []

    for index, step in enumerate(case.steps):
        manifests = tmp_path / f"step-{index}"
        relabel = index == 0 or step.pod_labels is not None or step.namespace_labels is not None
        if step.pod_labels is not None:
            pod_labels = step.pod_labels
        if step.namespace_labels is not None:
            namespace_labels = step.namespace_labels
        if relabel:
            model = model_manifests(
                case.ports, case.protocols, pod_labels=pod_labels, namespace_labels=namespace_labels
            )
            write(manifests / "00-model.yaml", model)
        needs_ips = any("$" in p.spec for p in step.policies)
        if needs_ips and relabel:  # the pods must exist before their addresses go into a policy
            ok(run("--state", str(state), "apply", "-f", str(manifests / "00-model.yaml")), "apply model")
            ips = pod_ips(state)
            (manifests / "00-model.yaml").unlink()
        elif needs_ips and ips is None:
            ips = pod_ips(state)
        if step.policies:
            docs = [p.document(ips or {}) for p in step.policies]
            write(manifests / "10-policies.yaml", docs)
            applied.append(yaml.safe_dump_all(docs, sort_keys=False))
        if manifests.exists() and any(manifests.iterdir()):
            ok(run("--state", str(state), "apply", "-f", str(manifests)), f"apply -f step-{index}")
        for target in step.delete:
            namespace, name = split(target)
            ok(
                run("--state", str(state), "delete", "networkpolicy", name, "-n", namespace),
                f"delete {target}",
            )
            applied.append(f"# deleted NetworkPolicy {target}\n")

        for probe in step.probes:
            expected = Reachability()
            probe.expect(expected)
            observed = observed_grid(state, probe)
            if expected.wrong_cells(observed):
                failures.append(
                    f"step {index + 1}, {probe.protocol}/{probe.port} to {probe.to}:\n"
                    + grid_diff(expected, observed)
                )
        if failures:
            break

    if failures:
        pytest.fail(
            f"{case.id} [{case.source}]\n\npolicies (in order):\n"
            + "---\n".join(applied)
            + "\n"
            + "\n\n".join(failures),
            pytrace=False,
        )


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_upstream_netpol_case(case: Case, tmp_path: Path) -> None:
    run_case(case, tmp_path)


# ------------------------------------------------------------------------------------------------------
# the harness itself: these hold whether or not `isthmus matrix` exists


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_reachability_algebra_follows_upstream() -> None:
    r = Reachability()
    assert all(r.allowed(s, d) for s in ALL_PODS for d in ALL_PODS)
    r.expect_all_ingress("x/a", False).expect("x/b", "x/a", True)  # later calls overwrite earlier ones
    assert not r.allowed("y/c", "x/a") and r.allowed("x/b", "x/a") and r.allowed("x/a", "y/c")
    r.expect_all_egress("z/c", False)
    assert not any(r.allowed("z/c", d) for d in ALL_PODS)
    r.expect_peer("y", None, None, "b", False)  # None matches anything, as upstream's empty Peer field
    assert not r.allowed("y/a", "z/b") and not r.allowed("y/c", "x/b") and r.allowed("y/a", "z/a")
    r.expect_peer(None, None, None, None, True)
    assert all(r.allowed(s, d) for s in ALL_PODS for d in ALL_PODS)
    # loopback cells are not compared; a missing cell is wrong
    observed = {s: {d: s != d for d in ALL_PODS} for s in ALL_PODS}
    assert r.wrong_cells(observed) == []
    del observed["x/a"]["x/b"]
    observed["y/a"]["y/b"] = False
    assert r.wrong_cells(observed) == [("x/a", "x/b"), ("y/a", "y/b")]
    diff = grid_diff(r, observed)
    assert "x/a -> x/b (expected allowed, observed ?)" in diff and "y/a -> y/b" in diff


def test_model_manifests_apply_and_place_pods(tmp_path: Path) -> None:
    """The model itself is acceptable to `isthmus apply`, pods get addresses, and alternate nodes."""
    state = tmp_path / "state"
    write(tmp_path / "m" / "model.yaml", model_manifests((80, 81), ("TCP", "UDP", "SCTP")))
    ok(run("--state", str(state), "apply", "-f", str(tmp_path / "m")), "apply model")
    ips = pod_ips(state)
    assert len(set(ips.values())) == len(ALL_PODS)
    pods = json.loads(ok(run("--state", str(state), "get", "pods", "-A", "-o", "json"), "get").stdout)[
        "items"
    ]
    nodes = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["spec"]["nodeName"] for p in pods}
    assert nodes == {pod: NODES[i % 2][0] for i, pod in enumerate(ALL_PODS)}
    x_a = next(p for p in pods if (p["metadata"]["namespace"], p["metadata"]["name"]) == ("x", "a"))
    assert [c["ports"][0]["name"] for c in x_a["spec"]["containers"]] == [
        "serve-80-tcp",
        "serve-80-udp",
        "serve-80-sctp",
        "serve-81-tcp",
        "serve-81-udp",
        "serve-81-sctp",
    ]
    services = json.loads(
        ok(run("--state", str(state), "get", "services", "-n", "y", "-o", "json"), "get").stdout
    )
    assert sorted(s["metadata"]["name"] for s in services["items"]) == ["s-y-a", "s-y-b", "s-y-c"]
