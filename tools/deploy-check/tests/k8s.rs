//! Every Kubernetes overlay renders (`kubectl kustomize`), validates against the schemas of a
//! pinned Kubernetes version (`kubernetes-validate`, strict), and keeps the policies: no host
//! network, no privileged container, probes, resources and a non-root security context on
//! every container, a PodDisruptionBudget for every workload, media without hostNetwork.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rethink_deploy_check::{at, kustomize, kustomize_text, parse_documents, run, str_at};
use serde_yaml::Value;

const OVERLAYS: [&str; 2] = ["dev", "prod"];
/// The Kubernetes version whose schemas the manifests must satisfy.
const KUBERNETES_VERSION: &str = "1.31.0";
/// kubernetes-validate from PyPI, pinned, in a venv under the cache.
const VALIDATOR: &str = "kubernetes-validate==1.31.0";

/// Returns the kubernetes-validate program, installing it into a venv on first use.
fn validator() -> Result<PathBuf> {
    let home = std::env::var("HOME").context("HOME")?;
    let venv = PathBuf::from(home).join(".cache/rethink/k8s-venv");
    let program = venv.join("bin/kubernetes-validate");
    if !program.exists() {
        let dir = std::env::temp_dir();
        run(
            "python3",
            &["-m", "venv", &venv.to_string_lossy()],
            &[],
            &dir,
        )?;
        let pip = venv.join("bin/pip");
        run(
            &pip.to_string_lossy(),
            &["install", "-q", VALIDATOR],
            &[],
            &dir,
        )?;
    }
    Ok(program)
}

fn validate(text: &str, name: &str) -> Result<String> {
    let file = std::env::temp_dir().join(format!("rethink-k8s-{name}-{}.yaml", std::process::id()));
    std::fs::write(&file, text)?;
    let program = validator()?;
    let result = run(
        &program.to_string_lossy(),
        &[
            "--strict",
            "-k",
            KUBERNETES_VERSION,
            &file.to_string_lossy(),
        ],
        &[],
        &std::env::temp_dir(),
    );
    let _ = std::fs::remove_file(&file);
    result
}

#[test]
fn every_overlay_validates_against_the_pinned_kubernetes_schemas() -> Result<()> {
    for overlay in OVERLAYS {
        let text = kustomize_text(overlay)?;
        let report = validate(&text, overlay).with_context(|| format!("overlay {overlay}"))?;
        let passed = report.lines().filter(|l| l.contains(" passed ")).count();
        let docs = parse_documents(&text)?;
        // Only the Gateway API routes (CRDs) have no schema in kubernetes-validate; they are
        // checked against the route table in tests/routes.rs.
        let crds = docs
            .iter()
            .filter(|d| str_at(d, "kind") == "HTTPRoute")
            .count();
        assert_eq!(passed + crds, docs.len(), "{overlay}: {report}");
    }
    Ok(())
}

#[test]
fn a_broken_manifest_fails_validation() {
    let broken =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: two\n";
    assert!(
        validate(broken, "broken").is_err(),
        "a string replica count must fail"
    );
}

/// Returns every policy violation of the rendered documents.
fn violations(docs: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let workloads = docs.iter().filter(|d| {
        matches!(
            str_at(d, "kind"),
            "Deployment" | "StatefulSet" | "DaemonSet"
        )
    });
    for workload in workloads {
        let name = format!(
            "{}/{}",
            str_at(workload, "kind"),
            str_at(workload, "metadata/name")
        );
        let pod = at(workload, "spec/template/spec")
            .cloned()
            .unwrap_or_default();
        for key in ["hostNetwork", "hostPID", "hostIPC"] {
            if at(&pod, key).and_then(Value::as_bool) == Some(true) {
                out.push(format!("{name}: {key}"));
            }
        }
        let containers = at(&pod, "containers").and_then(Value::as_sequence);
        for container in containers.into_iter().flatten() {
            let c = format!("{name}/{}", str_at(container, "name"));
            let sc = at(container, "securityContext");
            let flag = |key: &str| sc.and_then(|s| at(s, key)).and_then(Value::as_bool);
            if flag("privileged") == Some(true) {
                out.push(format!("{c}: privileged"));
            }
            if flag("runAsNonRoot") != Some(true) {
                out.push(format!("{c}: runAsNonRoot is not true"));
            }
            if flag("allowPrivilegeEscalation") != Some(false) {
                out.push(format!("{c}: allowPrivilegeEscalation is not false"));
            }
            if flag("readOnlyRootFilesystem") != Some(true) {
                out.push(format!("{c}: readOnlyRootFilesystem is not true"));
            }
            let drops: Vec<&str> = sc
                .and_then(|s| at(s, "capabilities/drop"))
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if drops != ["ALL"] || sc.and_then(|s| at(s, "capabilities/add")).is_some() {
                out.push(format!("{c}: capabilities must drop ALL and add none"));
            }
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                if at(container, probe).is_none() {
                    out.push(format!("{c}: no {probe}"));
                }
            }
            for resource in [
                "requests/cpu",
                "requests/memory",
                "limits/cpu",
                "limits/memory",
            ] {
                if at(container, &format!("resources/{resource}")).is_none() {
                    out.push(format!("{c}: no resources/{resource}"));
                }
            }
            let ports = at(container, "ports").and_then(Value::as_sequence);
            if ports
                .into_iter()
                .flatten()
                .any(|p| at(p, "hostPort").is_some())
            {
                out.push(format!("{c}: hostPort"));
            }
        }
        // Some PodDisruptionBudget selects this workload's pods.
        let labels = at(workload, "spec/template/metadata/labels")
            .cloned()
            .unwrap_or_default();
        let covered = docs
            .iter()
            .filter(|d| str_at(d, "kind") == "PodDisruptionBudget")
            .any(|pdb| {
                at(pdb, "spec/selector/matchLabels")
                    .and_then(Value::as_mapping)
                    .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
            });
        if !covered {
            out.push(format!("{name}: no PodDisruptionBudget"));
        }
    }
    out
}

#[test]
fn every_overlay_keeps_the_pod_policies() -> Result<()> {
    for overlay in OVERLAYS {
        let docs = kustomize(overlay)?;
        let found = violations(&docs);
        assert!(found.is_empty(), "{overlay}:\n{}", found.join("\n"));
        // The stateless services scale on their own; the SFU drains longer than it may take.
        for name in ["auth", "msg-node"] {
            let hpa = docs.iter().any(|d| {
                str_at(d, "kind") == "HorizontalPodAutoscaler"
                    && str_at(d, "spec/scaleTargetRef/name") == name
            });
            assert!(hpa, "{overlay}: no HPA for {name}");
        }
        let sfu = docs
            .iter()
            .find(|d| str_at(d, "kind") == "StatefulSet" && str_at(d, "metadata/name") == "sfu")
            .context("no sfu StatefulSet")?;
        let grace =
            at(sfu, "spec/template/spec/terminationGracePeriodSeconds").and_then(Value::as_u64);
        assert!(
            grace >= Some(125),
            "{overlay}: SFU grace {grace:?} shorter than its 120 s drain"
        );
        assert!(at(sfu, "spec/template/spec/containers/0/lifecycle/preStop").is_some());
    }
    Ok(())
}

#[test]
fn the_policy_check_catches_host_network_and_root() -> Result<()> {
    let mut docs = kustomize("dev")?;
    let sfu = docs
        .iter_mut()
        .find(|d| str_at(d, "metadata/name") == "sfu" && str_at(d, "kind") == "StatefulSet")
        .context("sfu")?;
    let Some(Value::Mapping(pod)) = sfu
        .get_mut("spec")
        .and_then(|s| s.get_mut("template"))
        .and_then(|t| t.get_mut("spec"))
    else {
        bail!("no pod spec");
    };
    pod.insert("hostNetwork".into(), true.into());
    let container = &mut pod["containers"][0];
    container["securityContext"]["runAsNonRoot"] = false.into();
    let found = violations(&docs);
    assert!(found.iter().any(|v| v.contains("hostNetwork")), "{found:?}");
    assert!(
        found.iter().any(|v| v.contains("runAsNonRoot")),
        "{found:?}"
    );
    // A workload without a PDB is reported too.
    docs.retain(|d| {
        !(str_at(d, "kind") == "PodDisruptionBudget" && str_at(d, "metadata/name") == "auth")
    });
    assert!(
        violations(&docs)
            .iter()
            .any(|v| v == "Deployment/auth: no PodDisruptionBudget")
    );
    Ok(())
}

/// Media reaches SFU pods through one NodePort Service per pod, on the port the pod binds.
#[test]
fn every_sfu_pod_has_its_own_media_service() -> Result<()> {
    for overlay in OVERLAYS {
        let docs = kustomize(overlay)?;
        let sfu = docs
            .iter()
            .find(|d| str_at(d, "kind") == "StatefulSet" && str_at(d, "metadata/name") == "sfu")
            .context("sfu")?;
        let replicas = at(sfu, "spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        for pod in 0..replicas {
            let name = format!("sfu-{pod}-media");
            let service = docs
                .iter()
                .find(|d| str_at(d, "kind") == "Service" && str_at(d, "metadata/name") == name)
                .with_context(|| format!("{overlay}: no Service {name}"))?;
            let selector = at(service, "spec/selector")
                .and_then(Value::as_mapping)
                .context("selector")?;
            assert_eq!(
                selector
                    .get("statefulset.kubernetes.io/pod-name")
                    .and_then(Value::as_str),
                Some(format!("sfu-{pod}").as_str())
            );
            let port = 31000 + pod;
            assert_eq!(
                at(service, "spec/ports/0/protocol").and_then(Value::as_str),
                Some("UDP")
            );
            assert_eq!(
                at(service, "spec/ports/0/nodePort").and_then(Value::as_u64),
                Some(port)
            );
            assert_eq!(
                at(service, "spec/ports/0/targetPort").and_then(Value::as_u64),
                Some(port)
            );
        }
    }
    Ok(())
}
