// The Isthmus console: the topology, live flows, a trace, a namespace's matrix with the impact of a
// pasted policy, and route targets of networks. Everything goes through the API with the bearer token
// the user gives (kept for the browser tab only); a tenant's token sees its own namespace.
import React, { useEffect, useRef, useState } from "react";
import { createRoot } from "react-dom/client";
import cytoscape from "cytoscape";
import "./style.css";

const API = "/apis/isthmus.io/v1";

async function call(token, path, options = {}) {
  const answer = await fetch(API + path, {
    ...options,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.message || `${answer.status}`);
  return body;
}

function Login({ onToken }) {
  const [value, setValue] = useState("");
  return (
    <form className="login" onSubmit={(e) => { e.preventDefault(); onToken(value); }}>
      <label>Token <input name="token" type="password" value={value} onChange={(e) => setValue(e.target.value)} /></label>
      <button type="submit">Sign in</button>
    </form>
  );
}

function Topology({ token }) {
  const box = useRef(null);
  const [shown, setShown] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {  // again every 5 s: sessions come up, pods come and go; the graph is redrawn on change
    const load = () =>
      call(token, "/topology")
        .then((next) => setShown((held) => (JSON.stringify(held) === JSON.stringify(next) ? held : next)))
        .catch((e) => setError(e.message));
    load();
    const timer = setInterval(load, 5000);
    return () => clearInterval(timer);
  }, [token]);
  useEffect(() => {
    if (!shown || !box.current) return;
    const elements = [];
    const add = (id, label, kind) => elements.push({ data: { id, label }, classes: kind });
    const link = (source, target) => elements.push({ data: { id: `${source}>${target}`, source, target } });
    shown.nodes.forEach((n) => add(`node:${n.name}`, `${n.name}\n${n.addresses.join(" ")}`, "node"));
    shown.networks.forEach((n) => add(`net:${n.name}`, `${n.name}\n${n.importTargets.join(" ")}`, "network"));
    shown.endpoints.forEach((e) => {
      add(`ep:${e.name}`, `${e.name}\n${e.addresses.join(" ")}`, e.kind);
      if (shown.networks.some((n) => n.name === e.network)) link(`ep:${e.name}`, `net:${e.network}`);
      if (e.node && shown.nodes.some((n) => n.name === e.node)) link(`ep:${e.name}`, `node:${e.node}`);
    });
    shown.services.forEach((s) => {
      add(`svc:${s.name}`, `${s.name}\n${s.vips.join(" ")}`, "service");
      const namespace = s.name.split("/")[0];
      s.backends.forEach((b) => {
        const target = `ep:${b.includes("/") ? b : `${namespace}/${b}`}`;
        if (elements.some((x) => x.data.id === target)) link(`svc:${s.name}`, target);
      });
    });
    shown.clusters.forEach((c) => {
      add(`cluster:${c.asn}`, `cluster AS ${c.asn}\n${c.nodes.join(" ")}`, "cluster");
      c.networks.forEach((n) => {
        const id = `remote:${c.asn}:${n.vni}`;
        add(id, `VNI ${n.vni} ${n.routeTargets.join(" ")}\n${n.prefixes.length} routes`, "remote");
        link(id, `cluster:${c.asn}`);
        shown.networks
          .filter((local) => local.importTargets.some((t) => n.routeTargets.includes(t)))
          .forEach((local) => link(id, `net:${local.name}`));
      });
    });
    shown.floatingIPs.forEach((f) => {
      add(`fip:${f.name}`, `${f.addresses.join(" ")}`, "floating");
      if (f.service) link(`fip:${f.name}`, `svc:${f.name.split("/")[0]}/${f.service}`);
    });
    const graph = cytoscape({
      container: box.current,
      elements: elements.filter((x) => !x.data.source || elements.some((y) => y.data.id === x.data.target)),
      layout: { name: "cose", animate: false },
      style: [
        { selector: "node", style: { label: "data(label)", "text-wrap": "wrap", "font-size": 9, "background-color": "#8aa" } },
        { selector: ".node", style: { shape: "round-rectangle", "background-color": "#557" } },
        { selector: ".network", style: { shape: "hexagon", "background-color": "#5a5" } },
        { selector: ".service", style: { shape: "diamond", "background-color": "#c84" } },
        { selector: ".floating", style: { shape: "star", "background-color": "#d55" } },
        { selector: ".vm", style: { shape: "square" } },
        { selector: ".cluster", style: { shape: "barrel", "background-color": "#335" } },
        { selector: ".remote", style: { shape: "hexagon", "background-color": "#9c9" } },
        { selector: "edge", style: { width: 1, "line-color": "#bbb" } },
      ],
    });
    return () => graph.destroy();
  }, [shown]);
  return (
    <section>
      {error && <p className="error">{error}</p>}
      {shown && (
        <p className="summary">
          {shown.nodes.length} nodes, {shown.networks.length} networks, {shown.endpoints.length} endpoints,{" "}
          {shown.services.length} services, {shown.floatingIPs.length} floating IPs,{" "}
          {shown.clusters.length} other clusters
        </p>
      )}
      <div className="graph" ref={box} data-testid="topology" />
      {shown && (
        <ul className="peers">
          {shown.nodes.map((n) => (
            <li key={n.name}>{n.name}: {n.peers.map((p) => `${p.address} ${p.state}`).join(", ") || "no BGP peers"}</li>
          ))}
        </ul>
      )}
      {shown && (
        <ul className="clusters">
          {shown.clusters.map((c) => (
            <li key={c.asn}>cluster AS {c.asn}: {c.networks.map((n) => `VNI ${n.vni} (${n.routeTargets.join(", ")}): ${n.prefixes.join(" ")}`).join("; ")}</li>
          ))}
        </ul>
      )}
      {shown && (
        <ul className="endpoints">
          {shown.endpoints.map((e) => <li key={e.name}>{e.name} {e.addresses.join(" ")} on {e.node}</li>)}
        </ul>
      )}
    </section>
  );
}

const end = (e) => (e.name ? `${e.namespace}/${e.name}` : e.address) + `:${e.port}`;

function Flows({ token }) {
  const [records, setRecords] = useState([]);
  const [verdict, setVerdict] = useState("");
  const [rule, setRule] = useState("");
  const [error, setError] = useState("");
  useEffect(() => {
    let live = true;
    let since = "";
    setRecords([]);
    const poll = () => {
      const query = new URLSearchParams({ ...(verdict ? { verdict } : {}), since });
      return call(token, `/flows?${query}`)
        .then((body) => {
          if (!live) return;
          since = Object.entries(body.positions).map(([node, seq]) => `${node}:${seq}`).join(",");
          setRecords((held) => [...body.items.reverse(), ...held].slice(0, 200));
        })
        .catch((e) => live && setError(e.message));
    };
    poll();
    const timer = setInterval(poll, 1000);
    return () => { live = false; clearInterval(timer); };
  }, [token, verdict]);
  const shown = records.filter((r) => r.rule.includes(rule));
  return (
    <section>
      {error && <p className="error">{error}</p>}
      <label>Verdict <select name="verdict" value={verdict} onChange={(e) => setVerdict(e.target.value)}>
        <option value="">any</option><option value="allowed">allowed</option><option value="dropped">dropped</option>
      </select></label>
      <label> Rule <input name="rule" value={rule} onChange={(e) => setRule(e.target.value)} /></label>
      <table className="flows">
        <thead><tr><th>time</th><th>node</th><th>source</th><th>destination</th><th>proto</th><th>state</th><th>verdict</th><th>rule</th></tr></thead>
        <tbody>
          {shown.map((r) => (
            <tr key={`${r.node}-${r.seq}`} className={r.verdict}>
              <td>{new Date(r.time * 1000).toLocaleTimeString()}</td><td>{r.node}</td><td>{end(r.source)}</td>
              <td>{end(r.destination)}{r.service ? ` (svc ${r.service})` : ""}</td><td>{r.protocol}</td>
              <td>{r.state}</td><td>{r.verdict}</td><td>{r.rule}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function Trace({ token }) {
  const [form, setForm] = useState({ source: "", destination: "", port: "80", protocol: "TCP" });
  const [walked, setWalked] = useState(null);
  const [error, setError] = useState("");
  const set = (key) => (e) => setForm({ ...form, [key]: e.target.value });
  const run = (e) => {
    e.preventDefault();
    setError("");
    call(token, `/trace?${new URLSearchParams(form)}`).then(setWalked).catch((x) => setError(x.message));
  };
  return (
    <section>
      <form onSubmit={run}>
        <input name="source" placeholder="NAMESPACE/POD" value={form.source} onChange={set("source")} />
        <input name="destination" placeholder="NAMESPACE/POD, svc/NS/NAME or address" value={form.destination} onChange={set("destination")} />
        <input name="port" value={form.port} onChange={set("port")} size="5" />
        <select name="protocol" value={form.protocol} onChange={set("protocol")}><option>TCP</option><option>UDP</option><option>SCTP</option></select>
        <button type="submit">Trace</button>
      </form>
      {error && <p className="error">{error}</p>}
      {walked && (
        <div className="trace">
          <p className={`verdict ${walked.verdict}`}>verdict: {walked.verdict} {walked.rule && `(${walked.rule})`}</p>
          <ol>{walked.hops.map((h, i) => <li key={i}><b>{h.node}</b> {h.step}: {h.detail} {h.rule && <i>[{h.rule}]</i>}</li>)}</ol>
        </div>
      )}
    </section>
  );
}

function Matrix({ token }) {
  const [namespace, setNamespace] = useState("default");
  const [port, setPort] = useState("80");
  const [grid, setGrid] = useState(null);
  const [policy, setPolicy] = useState("");
  const [impact, setImpact] = useState(null);
  const [error, setError] = useState("");
  const load = (e) => {
    e.preventDefault();
    setError("");
    call(token, `/namespaces/${namespace}/matrix?port=${port}`).then(setGrid).catch((x) => setError(x.message));
  };
  const preview = (e) => {
    e.preventDefault();
    setError("");
    const body = JSON.stringify({ manifests: policy, ports: [port] });
    call(token, `/namespaces/${namespace}/impact`, { method: "POST", body }).then(setImpact).catch((x) => setError(x.message));
  };
  return (
    <section>
      <form onSubmit={load}>
        <input name="namespace" value={namespace} onChange={(e) => setNamespace(e.target.value)} />
        <input name="port" value={port} onChange={(e) => setPort(e.target.value)} size="5" />
        <button type="submit">Matrix</button>
      </form>
      {error && <p className="error">{error}</p>}
      {grid && (
        <table className="matrix">
          <thead><tr><th />{grid.destinations.map((d) => <th key={d}>{d}</th>)}</tr></thead>
          <tbody>{grid.sources.map((s) => (
            <tr key={s}><th>{s}</th>{grid.destinations.map((d) => <td key={d}>{grid.allowed[s][d] ? "." : "X"}</td>)}</tr>
          ))}</tbody>
        </table>
      )}
      <form onSubmit={preview}>
        <textarea name="policy" rows="8" cols="70" placeholder="A NetworkPolicy, in YAML" value={policy} onChange={(e) => setPolicy(e.target.value)} />
        <button type="submit">Preview impact</button>
      </form>
      {impact && (
        <div className="impact">
          <p>{impact.closes.length} connection{impact.closes.length === 1 ? "" : "s"} close, {impact.opens.length} open</p>
          <ul>{impact.closes.map((c, i) => <li key={`c${i}`}>close {c.source} → {c.destination} {c.port}/{c.protocol}</li>)}
            {impact.opens.map((c, i) => <li key={`o${i}`}>open {c.source} → {c.destination} {c.port}/{c.protocol}</li>)}</ul>
        </div>
      )}
    </section>
  );
}

function Networks({ token }) {
  const [networks, setNetworks] = useState([]);
  const [edits, setEdits] = useState({});
  const [message, setMessage] = useState("");
  const load = () => call(token, "/topology").then((t) => setNetworks(t.networks)).catch((e) => setMessage(e.message));
  useEffect(() => { load(); }, [token]);
  const save = async (name) => {
    const [namespace, network] = name.split("/");
    const path = `/namespaces/${namespace}/virtualnetworks/${network}`;
    try {
      const held = await call(token, path);
      const targets = (edits[name] || "").split(",").map((t) => t.trim()).filter(Boolean);
      held.spec.importTargets = targets;
      held.spec.exportTargets = targets;
      await call(token, path, { method: "PUT", body: JSON.stringify(held) });
      setMessage(`${name}: route targets ${targets.join(", ") || "none"}`);
      load();
    } catch (e) {
      setMessage(`${name}: ${e.message}`);
    }
  };
  return (
    <section>
      {message && <p className="message">{message}</p>}
      <table className="networks">
        <thead><tr><th>network</th><th>mode</th><th>VNI</th><th>route targets</th><th /></tr></thead>
        <tbody>{networks.map((n) => (
          <tr key={n.name} data-network={n.name}>
            <td>{n.name}</td><td>{n.mode}</td><td>{n.vni}</td>
            <td><input name="targets" placeholder={n.importTargets.join(", ")} value={edits[n.name] ?? n.importTargets.join(", ")}
              onChange={(e) => setEdits({ ...edits, [n.name]: e.target.value })} /></td>
            <td><button onClick={() => save(n.name)}>Save</button></td>
          </tr>
        ))}</tbody>
      </table>
    </section>
  );
}

const VIEWS = { Topology, Flows, Trace, Matrix, Networks };

function Console() {
  const [token, setToken] = useState(sessionStorage.getItem("isthmus-token") || "");
  const [view, setView] = useState("Topology");
  if (!token) return <Login onToken={(t) => { sessionStorage.setItem("isthmus-token", t); setToken(t); }} />;
  const View = VIEWS[view];
  return (
    <main>
      <nav>
        <b>Isthmus</b>
        {Object.keys(VIEWS).map((name) => (
          <button key={name} className={name === view ? "active" : ""} onClick={() => setView(name)}>{name}</button>
        ))}
        <button onClick={() => { sessionStorage.removeItem("isthmus-token"); setToken(""); }}>Sign out</button>
      </nav>
      <View token={token} />
    </main>
  );
}

createRoot(document.getElementById("root")).render(<Console />);
