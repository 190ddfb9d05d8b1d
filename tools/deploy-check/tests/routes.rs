//! One route table (`deploy/routes.toml`) against Traefik's labels in compose, the HTTPRoutes
//! of every Kubernetes overlay, and the public paths the services announce (the links the local
//! stack prints, declared with `ServiceParts::link`).

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use rethink_deploy_check::{Route, at, compose_config, kustomize, repo_root, routes, str_at};
use serde_yaml::Value;

/// Overlays and the domain their routes answer on.
const OVERLAYS: [(&str, &str); 2] = [("dev", "localhost"), ("prod", "rethink.example.com")];

/// (router, service, rule, port) of every Traefik router in the resolved compose file.
fn compose_routers(config: &Value) -> Result<BTreeMap<String, (String, String, String)>> {
    let mut routers = BTreeMap::new();
    let services = at(config, "services")
        .and_then(Value::as_mapping)
        .context("no services")?;
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        let Some(labels) = at(service, "labels").and_then(Value::as_mapping) else {
            continue;
        };
        let label = |key: &str| {
            labels
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        for key in labels.keys().filter_map(Value::as_str) {
            let Some(router) = key
                .strip_prefix("traefik.http.routers.")
                .and_then(|k| k.strip_suffix(".rule"))
            else {
                continue;
            };
            let backend = label(&format!("traefik.http.routers.{router}.service"));
            let port = label(&format!(
                "traefik.http.services.{backend}.loadbalancer.server.port"
            ));
            let entry = (format!("{name}→{backend}"), label(key), port);
            let previous = routers.insert(router.to_owned(), entry.clone());
            // Replicas carry the same labels; one router may not mean two things.
            if let Some(previous) = previous {
                ensure!(
                    (previous.1.as_str(), previous.2.as_str())
                        == (entry.1.as_str(), entry.2.as_str()),
                    "router {router} differs between compose services: {previous:?} / {entry:?}"
                );
            }
        }
    }
    Ok(routers)
}

#[test]
fn compose_labels_are_the_route_table() -> Result<()> {
    let table = routes()?;
    for domain in ["localhost", "video.example.org"] {
        let config = compose_config(&[], &[("DOMAIN", domain)])?;
        let routers = compose_routers(&config)?;
        for route in &table {
            let (owner, rule, port) = routers
                .get(&route.name)
                .with_context(|| format!("no Traefik router {} in compose", route.name))?;
            let (service, backend) = owner.split_once('→').unwrap_or_default();
            assert_eq!(rule, &route.traefik_rule(domain), "router {}", route.name);
            assert_eq!(port, &route.port.to_string(), "router {} port", route.name);
            assert!(
                service == route.service || service.starts_with(&format!("{}-", route.service)),
                "router {} is on compose service {service}, the table says {}",
                route.name,
                route.service
            );
            assert_eq!(backend, route.service, "router {} backend", route.name);
        }
        let extra: Vec<_> = routers
            .keys()
            .filter(|r| !table.iter().any(|t| &t.name == *r))
            .collect();
        assert!(
            extra.is_empty(),
            "compose routers not in the table: {extra:?}"
        );
    }
    Ok(())
}

/// (hostname, match type, path, backend, port) of every HTTPRoute rule of a rendered overlay.
fn http_routes(docs: &[Value]) -> Vec<(String, String, String, String, u64)> {
    let mut out = Vec::new();
    for doc in docs.iter().filter(|d| str_at(d, "kind") == "HTTPRoute") {
        let hostnames: Vec<&str> = at(doc, "spec/hostnames")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let rules = at(doc, "spec/rules").and_then(Value::as_sequence);
        for rule in rules.into_iter().flatten() {
            let matches = at(rule, "matches").and_then(Value::as_sequence);
            let backends = at(rule, "backendRefs").and_then(Value::as_sequence);
            for m in matches.into_iter().flatten() {
                for b in backends.into_iter().flatten() {
                    for host in &hostnames {
                        out.push((
                            (*host).to_owned(),
                            str_at(m, "path/type").to_owned(),
                            str_at(m, "path/value").to_owned(),
                            str_at(b, "name").to_owned(),
                            at(b, "port").and_then(Value::as_u64).unwrap_or(0),
                        ));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_overlay_routes_exactly_the_route_table() -> Result<()> {
    let table = routes()?;
    for (overlay, domain) in OVERLAYS {
        let docs = kustomize(overlay)?;
        let configured = docs
            .iter()
            .find(|d| {
                str_at(d, "kind") == "ConfigMap"
                    && str_at(d, "metadata/name").starts_with("rethink")
            })
            .map(|d| str_at(d, "data/domain"))
            .unwrap_or_default();
        assert_eq!(
            configured, domain,
            "{overlay}: the domain the msg-node is given"
        );
        let mut expected: Vec<_> = table
            .iter()
            .map(|r: &Route| {
                (
                    r.hostname(domain),
                    r.gateway_match().to_owned(),
                    r.path.clone(),
                    r.service.clone(),
                    u64::from(r.port),
                )
            })
            .collect();
        expected.sort();
        assert_eq!(
            http_routes(&docs),
            expected,
            "{overlay}: HTTPRoutes against the table"
        );
        // Every backend is a Service of the overlay with that port.
        for route in &table {
            let service = docs
                .iter()
                .find(|d| {
                    str_at(d, "kind") == "Service" && str_at(d, "metadata/name") == route.service
                })
                .with_context(|| format!("{overlay}: no Service {}", route.service))?;
            let ports = at(service, "spec/ports").and_then(Value::as_sequence);
            assert!(
                ports
                    .into_iter()
                    .flatten()
                    .any(|p| at(p, "port").and_then(Value::as_u64) == Some(u64::from(route.port))),
                "{overlay}: Service {} has no port {}",
                route.service,
                route.port
            );
        }
    }
    Ok(())
}

/// The public paths the services declare with `.link(label, path)`: what the local stack
/// prints and serves on its one address.
fn announced_paths() -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for service in std::fs::read_dir(repo_root().join("services"))? {
        let lib = service?.path().join("src/lib.rs");
        let Ok(text) = std::fs::read_to_string(&lib) else {
            continue;
        };
        for (_, rest) in text
            .match_indices(".link(")
            .map(|(i, _)| text.split_at(i + 6))
        {
            let args: Vec<&str> = rest.splitn(5, '"').collect();
            if args.len() == 5 {
                out.push((lib.display().to_string(), args[3].to_owned()));
            }
        }
    }
    Ok(out)
}

#[test]
fn every_path_the_services_announce_has_a_route() -> Result<()> {
    let table = routes()?;
    let paths = announced_paths()?;
    assert!(paths.len() >= 6, "too few announced paths found: {paths:?}");
    for (file, path) in &paths {
        let concrete = path.replace("<room>", "demo");
        assert!(
            table
                .iter()
                .any(|r| r.host == rethink_deploy_check::RouteHost::App && r.covers(&concrete)),
            "{file} announces {path}, which no route of deploy/routes.toml carries"
        );
    }
    // And every table route's probe lies inside its own route.
    for route in &table {
        assert!(
            route.covers(&route.probe),
            "route {}: probe {} outside it",
            route.name,
            route.probe
        );
    }
    Ok(())
}
