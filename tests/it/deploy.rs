//! The deployment files (deploy/, Dockerfile): no cluster or container engine runs here, so
//! every manifest is parsed and checked against the config it ships — ports, paths, probe
//! targets, mounted file names — and the config itself is run through `jwt-gate check` with
//! exactly the files the manifests mount. The systemd unit goes through
//! `systemd-analyze`, and the binary is run the way the image runs it: as uid 65532 on a
//! read-only root filesystem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use yaml_rust2::{Yaml, YamlLoader};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn yaml_docs(text: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{text}"))
}

fn s(y: &Yaml) -> String {
    match y {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// One container spec as the tests need it.
struct Sidecar {
    container: Yaml,
    volumes: Vec<Yaml>,
}

/// What a pod gives the gate: mount path -> file name -> where it comes from.
fn mounted_files(side: &Sidecar, sources: &BTreeMap<String, Vec<String>>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for m in side.container["volumeMounts"].as_vec().unwrap() {
        let name = s(&m["name"]);
        let path = s(&m["mountPath"]);
        assert_eq!(
            m["readOnly"].as_bool(),
            Some(true),
            "{name} is not read-only"
        );
        let vol = side
            .volumes
            .iter()
            .find(|v| s(&v["name"]) == name)
            .unwrap_or_else(|| panic!("volumeMount {name} has no volume"));
        let keys: Vec<String> = if let Some(items) = vol["secret"]["items"].as_vec() {
            items.iter().map(|i| s(&i["path"])).collect()
        } else {
            let source = if !vol["configMap"].is_badvalue() {
                s(&vol["configMap"]["name"])
            } else {
                s(&vol["secret"]["secretName"])
            };
            sources
                .get(&source)
                .unwrap_or_else(|| panic!("volume {name}: no object {source} is shipped"))
                .clone()
        };
        for k in keys {
            files.push(Path::new(&path).join(k));
        }
    }
    files
}

/// `jwt-gate check` on `toml` where every `/etc/jwt-gate/...` path is re-rooted in a temp
/// dir holding exactly the files in `mounted` (the key files get usable contents).
fn check_with_mounted_files(toml: &str, mounted: &[PathBuf]) -> (bool, String) {
    let dir = TempDir::new("deploy-mounts");
    let root = dir.0.join("root");
    for f in mounted {
        let local = root.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        let name = f.file_name().unwrap().to_str().unwrap();
        let body = match name {
            "jwt.key" => "k".repeat(40),
            "password" => "redis-password".to_string(),
            _ => String::new(),
        };
        std::fs::write(&local, body).unwrap();
    }
    let rooted = toml.replace(
        "\"/etc/jwt-gate/",
        &format!("\"{}/etc/jwt-gate/", root.display()),
    );
    let (code, text) = run_check(&dir.write("check.toml", &rooted));
    (code == 0, text)
}

fn toml_value(toml: &str) -> toml::Table {
    toml.parse().unwrap()
}

fn s_of(v: &toml::Value) -> String {
    v.as_str().unwrap().to_string()
}

fn port_of(addr: &str) -> i64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// The checks both Kubernetes variants must pass.
fn check_sidecar(
    variant: &str,
    side: &Sidecar,
    toml: &str,
    sources: &BTreeMap<String, Vec<String>>,
) {
    let c = &side.container;
    let cfg = toml_value(toml);
    // the config file the container is told to read is one the pod mounts
    let args: Vec<String> = c["args"].as_vec().unwrap().iter().map(s).collect();
    let at = args.iter().position(|a| a == "--config").unwrap();
    let config_path = PathBuf::from(&args[at + 1]);
    let mounted = mounted_files(side, sources);
    assert!(
        mounted.contains(&config_path),
        "{variant}: {config_path:?} is not mounted (mounted: {mounted:?})"
    );
    // every file the config names is mounted, and the gate accepts the config with them
    let (ok, out) = check_with_mounted_files(toml, &mounted);
    assert!(
        ok,
        "{variant}: jwt-gate check failed with the mounted files:\n{out}"
    );

    // probes: the admin listener, reachable from the kubelet (not loopback)
    let admin = cfg["admin"]["addr"].as_str().unwrap();
    assert!(
        !admin.starts_with("127."),
        "{variant}: admin on loopback: probes cannot reach it"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(s(&c[probe]["httpGet"]["path"]), path, "{variant} {probe}");
        assert_eq!(
            c[probe]["httpGet"]["port"].as_i64(),
            Some(port_of(admin)),
            "{variant} {probe} port"
        );
    }
    // hardening
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true), "{variant}");
    assert_eq!(
        sc["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{variant}"
    );
    assert_eq!(
        sc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{variant}"
    );
    assert_eq!(
        sc["capabilities"]["drop"]
            .as_vec()
            .map(|v| v.iter().map(s).collect::<Vec<_>>()),
        Some(vec!["ALL".to_string()]),
        "{variant}"
    );
    // the image's USER
    let dockerfile = read("Dockerfile");
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .unwrap()
        .trim_start_matches("USER ")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        s(&sc["runAsUser"]),
        user,
        "{variant}: runAsUser is not the image's USER"
    );
    for k in ["requests", "limits"] {
        assert!(
            !c["resources"][k]["memory"].is_badvalue(),
            "{variant}: resources.{k}.memory"
        );
    }
    // the replay store is GitLab's Redis, with the password from a mounted file
    assert_eq!(cfg["replay"]["store"].as_str(), Some("redis"));
    assert!(cfg["replay"]["redis_url"]
        .as_str()
        .unwrap()
        .contains("redis"));
}

fn inner(values: &Yaml, key: &str) -> Vec<Yaml> {
    let text = s(&values["gitlab"]["webservice"][key]);
    match yaml_docs(&text).into_iter().next() {
        Some(Yaml::Array(a)) => a,
        other => panic!("{key} is not a YAML list: {other:?}"),
    }
}

#[test]
fn helm_values_agree_with_the_config_they_ship() {
    let toml = read("deploy/kubernetes/jwt-gate.toml");
    let cfg = toml_value(&toml);
    let values = yaml_docs(&read("deploy/helm/values-jwt-gate.yaml")).remove(0);
    let objects = yaml_docs(&read("deploy/helm/jwt-gate-objects.yaml"));

    // the shipped objects: ConfigMap (holding exactly deploy/kubernetes/jwt-gate.toml) and Secret
    let mut sources = BTreeMap::new();
    for o in &objects {
        let name = s(&o["metadata"]["name"]);
        let data = match s(&o["kind"]).as_str() {
            "ConfigMap" => &o["data"],
            "Secret" => &o["stringData"],
            k => panic!("unexpected {k}"),
        };
        let keys: Vec<String> = data.as_hash().unwrap().keys().map(s).collect();
        if s(&o["kind"]) == "ConfigMap" {
            assert_eq!(
                s(&data["jwt-gate.toml"]),
                toml,
                "ConfigMap differs from deploy/kubernetes/jwt-gate.toml"
            );
        }
        sources.insert(name, keys);
    }
    let containers = inner(&values, "extraContainers");
    let gate = containers
        .iter()
        .find(|c| s(&c["name"]) == "jwt-gate")
        .expect("a jwt-gate container")
        .clone();
    let side = Sidecar {
        container: gate,
        volumes: inner(&values, "extraVolumes"),
    };
    check_sidecar("helm", &side, &toml, &sources);
    // Workhorse is left as the chart makes it: no port or listener moved
    let webservice = &values["gitlab"]["webservice"];
    assert!(webservice["service"]["workhorseInternalPort"].is_badvalue());
    assert!(webservice["workhorse"]["extraArgs"].is_badvalue());
    assert!(cfg["upstream"]["url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
}

/// The objects deploy/helm/jwt-gate-objects.yaml ships: name -> the keys it holds.
fn shipped_sources(toml: &str) -> BTreeMap<String, Vec<String>> {
    let mut sources = BTreeMap::new();
    for o in yaml_docs(&read("deploy/helm/jwt-gate-objects.yaml")) {
        let data = match s(&o["kind"]).as_str() {
            "ConfigMap" => {
                assert_eq!(s(&o["data"]["jwt-gate.toml"]), toml);
                o["data"].clone()
            }
            _ => o["stringData"].clone(),
        };
        let keys = data.as_hash().unwrap().keys().map(s).collect();
        sources.insert(s(&o["metadata"]["name"]), keys);
    }
    sources
}

/// GitLab's chart rendered as `helm template` does, with the shipped values and
/// post-renderer. The chart lives in ../shared (CI has it); without it this test fails and
/// says why, it never passes by skipping.
fn render_chart(extra_json: Option<&str>) -> Vec<Yaml> {
    let values = repo("deploy/helm/values-jwt-gate.yaml");
    let out = render_with(Some(&values), "deploy/helm/post-renderer", extra_json);
    assert!(
        out.status.success(),
        "render failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_render(&out.stdout)
}

fn parse_render(stdout: &[u8]) -> Vec<Yaml> {
    yaml_docs(std::str::from_utf8(stdout).unwrap())
        .into_iter()
        .filter(|d| !d.is_null() && !d.is_badvalue())
        .collect()
}

/// The renderer's whole output, with `values` (if any) and `post_renderer`.
fn render_with(
    values: Option<&Path>,
    post_renderer: &str,
    extra_json: Option<&str>,
) -> std::process::Output {
    let renderer = repo("../shared/reference/render-gitlab-chart");
    assert!(
        renderer.exists(),
        "GitLab's Helm chart and its renderer are not at {}: these tests need ../shared/reference",
        renderer.display()
    );
    let mut cmd = Command::new("python3");
    cmd.arg(&renderer);
    if let Some(v) = values {
        cmd.arg("-f").arg(v);
    }
    cmd.arg("--post-renderer").arg(repo(post_renderer));
    if let Some(j) = extra_json {
        cmd.arg("--set-json").arg(j);
    }
    cmd.output().unwrap()
}

/// A webservice Service's Workhorse port entry.
fn workhorse_port(service: &Yaml) -> Yaml {
    service["spec"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| s(&p["name"]) == "http-workhorse")
        .expect("the Service has an http-workhorse port")
        .clone()
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter()
        .filter(|d| {
            s(&d["kind"]) == kind && d["metadata"]["labels"]["app"].as_str() == Some("webservice")
        })
        .collect()
}

/// The port of a Workhorse `[[listeners]]` entry in its config.toml (`addr = ":8181"`).
fn workhorse_listener_port(config_toml: &str) -> i64 {
    let at = config_toml
        .find("[[listeners]]")
        .expect("Workhorse has a listener");
    let line = config_toml[at..]
        .lines()
        .find(|l| l.trim_start().starts_with("addr"))
        .unwrap();
    port_of(line.split('"').nth(1).unwrap())
}

fn check_rendered_pods(docs: &[Yaml], toml: &str, want_deployments: &[&str]) {
    let cfg = toml_value(toml);
    let listen = port_of(cfg["listen"]["addr"].as_str().unwrap());
    let admin = port_of(cfg["admin"]["addr"].as_str().unwrap());
    let upstream = port_of(cfg["upstream"]["url"].as_str().unwrap());
    let sources = shipped_sources(toml);
    let deployments = of_kind(docs, "Deployment");
    let names: Vec<String> = deployments
        .iter()
        .map(|d| s(&d["metadata"]["name"]))
        .collect();
    assert_eq!(names, want_deployments, "webservice Deployments rendered");
    for d in &deployments {
        let name = s(&d["metadata"]["name"]);
        let spec = &d["spec"]["template"]["spec"];
        let containers = spec["containers"].as_vec().unwrap();
        let gate = containers
            .iter()
            .find(|c| s(&c["name"]) == "jwt-gate")
            .unwrap_or_else(|| panic!("{name}: no jwt-gate container"));
        let side = Sidecar {
            container: gate.clone(),
            volumes: spec["volumes"].as_vec().unwrap().clone(),
        };
        check_sidecar(&name, &side, toml, &sources);
        let gate_ports: Vec<(String, i64)> = gate["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|p| (s(&p["name"]), p["containerPort"].as_i64().unwrap()))
            .collect();
        assert!(
            gate_ports.contains(&("jwt-gate".to_string(), listen)),
            "{name}: {gate_ports:?}"
        );
        assert!(
            gate_ports.contains(&("jwt-gate-admin".to_string(), admin)),
            "{name}: {gate_ports:?}"
        );
        // Workhorse's own listener, from the ConfigMap the chart writes for this deployment
        let suffix = name.trim_start_matches("gitlab-webservice-");
        let workhorse_cm = docs
            .iter()
            .find(|o| {
                s(&o["kind"]) == "ConfigMap"
                    && s(&o["metadata"]["name"]) == format!("gitlab-workhorse-{suffix}")
            })
            .unwrap_or_else(|| panic!("{name}: no Workhorse ConfigMap"));
        let wh_port =
            workhorse_listener_port(&s(&workhorse_cm["data"]["workhorse-config.toml.tpl"]));
        assert_eq!(
            upstream, wh_port,
            "{name}: the gate must forward to Workhorse's listener"
        );
        // no port bound twice in the pod: every containerPort, Workhorse's listener, the gate's
        let mut bound: Vec<i64> = containers
            .iter()
            .flat_map(|c| c["ports"].as_vec().cloned().unwrap_or_default())
            .map(|p| p["containerPort"].as_i64().unwrap())
            .collect();
        bound.sort();
        let mut unique = bound.clone();
        unique.dedup();
        assert_eq!(bound, unique, "{name}: a containerPort is declared twice");
        assert!(
            bound.contains(&wh_port),
            "{name}: Workhorse's listener is not its containerPort"
        );
        for p in [listen, admin] {
            assert_eq!(bound.iter().filter(|&&b| b == p).count(), 1, "{name}: {p}");
        }
    }
    // every webservice Service sends its Workhorse port to the gate
    let services = of_kind(docs, "Service");
    assert_eq!(services.len(), deployments.len());
    for svc in services {
        let port = workhorse_port(svc);
        assert_eq!(
            s(&port["targetPort"]),
            "jwt-gate",
            "{}",
            s(&svc["metadata"]["name"])
        );
    }
    // and outside traffic reaches the pods only on the gate's ports
    let policies: Vec<&Yaml> = docs
        .iter()
        .filter(|d| s(&d["kind"]) == "NetworkPolicy")
        .collect();
    assert_eq!(policies.len(), 1, "one NetworkPolicy");
    let p = policies[0];
    assert_eq!(
        s(&p["spec"]["podSelector"]["matchLabels"]["app"]),
        "webservice"
    );
    let mut allowed: Vec<i64> = p["spec"]["ingress"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_vec().cloned().unwrap_or_default())
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    allowed.sort();
    // the gate's ports and the read-only metrics ports; never Workhorse or Puma
    assert_eq!(allowed, vec![8083, listen, admin, 9229]);
    for direct in [8080, 8081, 8181] {
        assert!(
            !allowed.contains(&direct),
            "{direct} is reachable from outside the pod"
        );
    }
}

#[test]
fn the_real_chart_puts_the_gate_in_front_of_every_webservice_pod() {
    let toml = read("deploy/kubernetes/jwt-gate.toml");
    let docs = render_chart(None);
    check_rendered_pods(&docs, &toml, &["gitlab-webservice-default"]);
    // the Ingress still goes to the Service's Workhorse port, which is now the gate's
    let ingress = of_kind(&docs, "Ingress");
    assert_eq!(ingress.len(), 1);
    let backend = &ingress[0]["spec"]["rules"][0]["http"]["paths"][0]["backend"];
    assert_eq!(backend["servicePort"].as_i64(), Some(8181));
    // a second webservice deployment is covered too
    let two = render_chart(Some(
        r#"{"gitlab":{"webservice":{"deployments":{"default":{"ingress":{"path":"/"}},"api":{"ingress":{"path":"/api"}}}}}}"#,
    ));
    check_rendered_pods(
        &two,
        &toml,
        &["gitlab-webservice-api", "gitlab-webservice-default"],
    );
}

#[test]
fn the_post_renderer_refuses_a_chart_it_does_not_know() {
    let run = |stream: &str| {
        run_with_stdin(
            Command::new(repo("deploy/helm/post-renderer")),
            stream.as_bytes(),
        )
    };
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: gitlab-webservice-default\n  labels:\n    app: webservice\nspec:\n  template:\n    spec:\n      containers:\n      - name: jwt-gate\n        image: x\n      - name: gitlab-workhorse\n        image: y\n";
    let service = |ports: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: gitlab-webservice-default\n  labels:\n    app: webservice\nspec:\n  ports:\n{ports}")
    };
    let known = "  - name: http-webservice\n    port: 8080\n    targetPort: http-webservice\n  - name: http-workhorse\n    port: 8181\n    targetPort: http-workhorse\n";
    // the control: the shape it knows is patched
    let ok = run(&format!("{deployment}---\n{}", service(known)));
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        text.contains("targetPort: jwt-gate") && !text.contains("targetPort: http-workhorse"),
        "{text}"
    );
    // the Workhorse port moved in the list: refused, nothing printed
    let moved = "  - name: http-workhorse\n    port: 8181\n    targetPort: http-workhorse\n  - name: http-webservice\n    port: 8080\n    targetPort: http-webservice\n";
    let out = run(&format!("{deployment}---\n{}", service(moved)));
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not shaped as expected"));
    // a webservice Deployment without the gate: refused (the values were forgotten)
    let bare = deployment.replace("      - name: jwt-gate\n        image: x\n", "");
    let out = run(&format!("{bare}---\n{}", service(known)));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("jwt-gate container is missing"));
}

#[test]
fn omnibus_config_and_gitlab_rb_snippet_agree() {
    let toml = read("deploy/omnibus/jwt-gate.toml");
    let cfg = toml_value(&toml);
    let snippet = read("deploy/omnibus/gitlab.rb.snippet");
    let nginx_port: i64 = snippet
        .lines()
        .find_map(|l| l.strip_prefix("nginx['listen_port'] = "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let upstream = cfg["upstream"]["url"].as_str().unwrap();
    assert_eq!(upstream, format!("http://127.0.0.1:{nginx_port}"));
    assert!(snippet.contains("nginx['listen_addresses'] = ['127.0.0.1']"));
    assert!(snippet.contains("nginx['listen_https'] = false"));
    assert_eq!(port_of(cfg["listen"]["addr"].as_str().unwrap()), 443);

    // every vhost moves to the one loopback port the gate forwards to, without TLS
    for vhost in ["nginx", "registry_nginx", "pages_nginx"] {
        assert!(
            snippet.contains(&format!("{vhost}['listen_addresses'] = ['127.0.0.1']")),
            "{vhost}"
        );
        assert!(
            snippet.contains(&format!("{vhost}['listen_port'] = {nginx_port}")),
            "{vhost}"
        );
        assert!(
            snippet.contains(&format!("{vhost}['listen_https'] = false")),
            "{vhost}"
        );
    }
    assert!(snippet.contains("letsencrypt['enable'] = true"));
    assert!(
        cfg["listen"]["http_redirect_addr"].as_str().is_some(),
        "port 80 for HTTP-01"
    );

    // the config checks with real certificate and key files where it expects them, one per
    // hostname of the snippet's external URLs
    let dir = TempDir::new("omnibus");
    let root = dir.0.join("root");
    let tls = &cfg["listen"]["tls"];
    let mut pairs = vec![(s_of(&tls["cert"]), s_of(&tls["key"]))];
    for c in tls["certificates"].as_array().unwrap() {
        pairs.push((s_of(&c["cert"]), s_of(&c["key"])));
    }
    for (cert, key_path) in &pairs {
        let host = Path::new(cert)
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            snippet.contains(&format!("'https://{host}'")),
            "no external URL for {host}"
        );
        let mut params = rcgen::CertificateParams::new(vec![host]).unwrap();
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        for (path, text) in [
            (cert, params.self_signed(&key).unwrap().pem()),
            (key_path, key.serialize_pem()),
        ] {
            let local = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            std::fs::write(local, text).unwrap();
        }
    }
    let jwt_key = root.join("etc/jwt-gate/jwt.key");
    std::fs::create_dir_all(jwt_key.parent().unwrap()).unwrap();
    std::fs::write(jwt_key, "k".repeat(40)).unwrap();
    let rooted = toml
        .replace(
            "\"/etc/jwt-gate/",
            &format!("\"{}/etc/jwt-gate/", root.display()),
        )
        .replace(
            "\"/etc/gitlab/",
            &format!("\"{}/etc/gitlab/", root.display()),
        );
    let cfg_path = dir.write("omnibus.toml", &rooted);
    let (code, text) = run_check(&cfg_path);
    assert_eq!(code, 0, "{text}");

    // the systemd unit reads the config where the guide installs it
    let unit = read("deploy/systemd/jwt-gate.service");
    assert!(unit.contains("--config /etc/jwt-gate/jwt-gate.toml"));
    assert!(read("deploy/omnibus/README.md").contains("/etc/jwt-gate/jwt-gate.toml"));
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = read("deploy/systemd/jwt-gate.service");
    for line in [
        "User=jwt-gate",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: verify and security checks not run");
        return;
    }
    // verify with the ExecStart binary pointing at the one just built
    let dir = TempDir::new("unit");
    let local = unit.replace("/usr/local/bin/jwt-gate", gate_bin().to_str().unwrap());
    let path = dir.write("jwt-gate.service", &local);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    // exposure (0–10, lower is better; 2.0 is the top of "OK"): the threshold is ×10
    let sec = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&sec.stdout);
    assert!(sec.status.success(), "exposure above 2.0:\n{report}");
    assert!(report.contains("Overall exposure level"), "{report}");
}

#[test]
fn dockerfile_is_multi_stage_nonroot_and_runs_the_config_the_manifests_mount() {
    let d = read("Dockerfile");
    let froms: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage");
    assert!(
        froms.last().unwrap().contains("distroless"),
        "small runtime: {froms:?}"
    );
    let user = d.lines().rfind(|l| l.starts_with("USER ")).unwrap();
    assert!(!user.contains(" 0") && !user.contains("root"), "{user}");
    let copy = d
        .lines()
        .find(|l| l.starts_with("COPY --from=build"))
        .unwrap();
    let dest = copy.split_whitespace().last().unwrap();
    let entry = d.lines().find(|l| l.starts_with("ENTRYPOINT")).unwrap();
    assert!(entry.contains(&format!("\"{dest}\"")), "{entry} vs {copy}");
    // the build stage's source list covers what the crate needs
    for p in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(
            d.contains(&format!("COPY {p}")) || d.contains(&format!(" {p} ")),
            "{p}"
        );
    }
    // dependencies are cached between builds, and the builder's Rust is the crate's minimum
    assert!(
        d.contains("--mount=type=cache,target=/src/target"),
        "no build cache"
    );
    let rust = crate_rust_version();
    assert!(
        froms[0].contains(&format!("rust:{rust}-")),
        "the builder is not Rust {rust}: {}",
        froms[0]
    );
}

/// `rust-version` in Cargo.toml.
fn crate_rust_version() -> String {
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    manifest["package"]["rust-version"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_declared_rust_version_is_the_dependencies_true_minimum() {
    // cargo metadata: the newest rust-version among the packages the binary builds from
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(repo("."))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    let nodes: BTreeMap<String, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n))
        .collect();
    // what the binary links and builds with: normal and build dependencies, transitively
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![meta["resolve"]["root"].as_str().unwrap().to_string()];
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        for d in nodes[&id]["deps"].as_array().unwrap() {
            let runtime = d["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"].as_str() == Some("build"));
            if runtime {
                stack.push(d["pkg"].as_str().unwrap().to_string());
            }
        }
    }
    let (need, who) = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| seen.contains(p["id"].as_str().unwrap()))
        .filter_map(|p| Some((version(p["rust_version"].as_str()?), p["name"].as_str()?)))
        .max()
        .unwrap();
    let declared = version(&crate_rust_version());
    let need2: Vec<u64> = need.iter().copied().take(2).collect();
    assert_eq!(
        declared, need2,
        "Cargo.toml says rust-version {declared:?}; {who} needs {need:?}"
    );
}

/// The image's runtime conditions, without an image: the real binary as uid/gid 65532 on a
/// root filesystem remounted read-only (a private mount namespace), serving traffic.
#[tokio::test]
async fn the_binary_serves_as_nonroot_on_a_read_only_root() {
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!("not root: the read-only-root run needs unshare -m; not run");
        return;
    }
    let up = Upstream::start().await;
    let dir = TempDir::new("ro-root");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let key = dir.write("jwt.key", SECRET);
    let cfg = dir.write(
        "gate.toml",
        &format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{}\"\n[provider]\nsecret_file = \"{}\"\n", up.addr, key.display()),
    );
    let bin = gate_bin();
    let script = format!(
        "mount --make-rprivate / && for m in $(awk '{{print $2}}' /proc/mounts | sort -u); do mount -o remount,bind,ro \"$m\" 2>/dev/null; done; \
         if touch /tmp/.rw-probe 2>/dev/null || touch {dir}/.rw-probe 2>/dev/null; then echo 'root is writable' >&2; exit 97; fi; \
         exec setpriv --reuid=65532 --regid=65532 --clear-groups --no-new-privs {bin} run --config {cfg}",
        dir = dir.0.display(),
        bin = bin.display(),
        cfg = cfg.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script]);
    let served = serve_bin(cmd).await;
    let (pid, addr) = (served.bin.0.id(), served.addr);
    let admin = served.admin.expect("the admin listener is on");
    // the process serving is the gate, as 65532
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65532"),
        "{uid}"
    );
    assert_eq!(
        get(&format!("http://{addr}/api/v4/version")).await.status,
        200
    );
    let token = hs256(&claims("ro@example.com"));
    let link = format!("http://{addr}/users/auth/jwt/callback?jwt={token}");
    assert_eq!(get(&link).await.status, 200);
    assert_eq!(get(&link).await.reason(), Some("replayed"));
    assert_eq!(get(&format!("http://{admin}/readyz")).await.status, 200);
    assert_eq!(up.count(), 2);
    drop(served);
}

/// The newest glibc symbol version a binary needs (`objdump -T`).
fn glibc_floor(bin: &Path) -> (u32, u32) {
    let out = Command::new("objdump").arg("-T").arg(bin).output().unwrap();
    assert!(
        out.status.success(),
        "objdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let v: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .unwrap()
}

#[test]
fn the_glibc_floor_is_the_documented_one() {
    // built on Debian 12 (as the Dockerfile and this suite do): glibc 2.34 and later, so
    // RHEL 8 (2.28) and Ubuntu 20.04 (2.31) need scripts/build-portable (glibc 2.28)
    let floor = glibc_floor(&gate_bin());
    assert!(floor <= (2, 34), "the binary needs glibc {floor:?}");
    let readme = read("README.md");
    assert!(
        readme.contains(&format!("glibc {}.{}", floor.0, floor.1)),
        "README.md must state the floor glibc {}.{}",
        floor.0,
        floor.1
    );
    assert!(readme.contains("scripts/build-portable"));
}

#[test]
fn the_standalone_topology_puts_a_gate_deployment_in_front_of_the_webservice_service() {
    let toml = read("deploy/kubernetes/jwt-gate-standalone.toml");
    let cfg = toml_value(&toml);
    let out = render_with(None, "deploy/helm/post-renderer-standalone", None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = parse_render(&out.stdout);
    let named = |kind: &str, name: &str| -> Yaml {
        docs.iter()
            .find(|d| s(&d["kind"]) == kind && s(&d["metadata"]["name"]) == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    // the gate's own objects, its config the shipped file
    let cm = named("ConfigMap", "jwt-gate-standalone-config");
    assert_eq!(s(&cm["data"]["jwt-gate.toml"]), toml);
    let deployment = named("Deployment", "jwt-gate");
    assert!(deployment["spec"]["replicas"].as_i64().unwrap() >= 2);
    let spec = &deployment["spec"]["template"]["spec"];
    let gate = spec["containers"][0].clone();
    let mut sources = shipped_sources(&read("deploy/kubernetes/jwt-gate.toml"));
    sources.insert(
        "jwt-gate-standalone-config".into(),
        vec!["jwt-gate.toml".into()],
    );
    let side = Sidecar {
        container: gate.clone(),
        volumes: spec["volumes"].as_vec().unwrap().clone(),
    };
    check_sidecar("standalone", &side, &toml, &sources);
    let listen = port_of(cfg["listen"]["addr"].as_str().unwrap());
    let svc = named("Service", "jwt-gate");
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["port"].as_i64(), Some(listen));
    assert_eq!(s(&port["targetPort"]), "jwt-gate");
    assert!(gate["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .any(|p| s(&p["name"]) == "jwt-gate" && p["containerPort"].as_i64() == Some(listen)));
    let pdb = named("PodDisruptionBudget", "jwt-gate");
    assert_eq!(pdb["spec"]["minAvailable"].as_i64(), Some(1));
    assert_eq!(
        s(&pdb["spec"]["selector"]["matchLabels"]["app"]),
        "jwt-gate"
    );
    // the Ingress goes to the gate; the gate to the webservice Service's Workhorse port
    let ingress = named("Ingress", "gitlab-webservice-default");
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"];
    assert_eq!(s(&backend["serviceName"]), "jwt-gate");
    assert_eq!(backend["servicePort"].as_i64(), Some(listen));
    let web = named("Service", "gitlab-webservice-default");
    let workhorse = workhorse_port(&web);
    assert_eq!(
        cfg["upstream"]["url"].as_str().unwrap(),
        format!(
            "http://gitlab-webservice-default:{}",
            workhorse["port"].as_i64().unwrap()
        )
    );
    // Workhorse's port admits only the gate and the components that call it directly
    let np = named("NetworkPolicy", "jwt-gate-webservice");
    assert_eq!(
        s(&np["spec"]["podSelector"]["matchLabels"]["app"]),
        "webservice"
    );
    let rules = np["spec"]["ingress"].as_vec().unwrap();
    assert_eq!(rules.len(), 1);
    let ports: Vec<i64> = rules[0]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, vec![8181]);
    let from = rules[0]["from"].as_vec().unwrap();
    assert_eq!(s(&from[0]["podSelector"]["matchLabels"]["app"]), "jwt-gate");
    let callers: Vec<String> = from[1]["podSelector"]["matchExpressions"][0]["values"]
        .as_vec()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(callers, ["gitlab-shell", "kas", "gitaly"]);
    // with two webservice deployments it refuses, rather than guard only one
    let two = render_with(
        None,
        "deploy/helm/post-renderer-standalone",
        Some(
            r#"{"gitlab":{"webservice":{"deployments":{"default":{"ingress":{"path":"/"}},"api":{"ingress":{"path":"/api"}}}}}}"#,
        ),
    );
    assert!(!two.status.success());
    assert!(String::from_utf8_lossy(&two.stderr).contains("standalone covers one"));
}

/// Evaluates a gitlab.rb the way Omnibus does (a Ruby file assigning into auto-vivifying
/// settings hashes) and returns every setting it made, as JSON text.
fn gitlab_rb_settings(path: &str) -> serde_json::Value {
    const EVAL: &str = r#"
require 'json'
vivify = ->(h, k) { h[k] = Hash.new(&vivify) }
$settings = Hash.new { |h, k| h[k] = Hash.new(&vivify) }
%w[nginx registry_nginx pages_nginx letsencrypt gitlab_rails].each do |name|
  define_method(name) { $settings[name] }
end
%w[external_url registry_external_url pages_external_url].each do |name|
  define_method(name) { |url| $settings['urls'][name] = url }
end
eval(File.read(ARGV[0]), binding, ARGV[0])
puts JSON.generate($settings)
"#;
    let out = Command::new("ruby")
        .args(["-e", EVAL, &repo(path).to_string_lossy()])
        .output()
        .expect("ruby is needed to evaluate gitlab.rb (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn gitlab_rb_for_19_2_sets_what_the_older_spelling_sets() {
    let old = gitlab_rb_settings("deploy/omnibus/gitlab.rb.snippet");
    let new = gitlab_rb_settings("deploy/omnibus/gitlab.rb.snippet-19.2");
    // the GitLab vhost's settings, moved under gitlab_rails['nginx'] and nothing else changed
    assert_eq!(old["nginx"], new["gitlab_rails"]["nginx"]);
    assert_eq!(old["nginx"]["listen_port"], 8480);
    assert_eq!(
        old["nginx"]["listen_addresses"],
        serde_json::json!(["127.0.0.1"])
    );
    assert!(
        new.get("nginx").is_none(),
        "19.2 snippet still uses nginx[...]"
    );
    for same in ["registry_nginx", "pages_nginx", "letsencrypt", "urls"] {
        assert_eq!(old[same], new[same], "{same}");
        assert!(old[same].is_object(), "{same} missing");
    }
    assert_eq!(old["letsencrypt"]["enable"], true);
}
