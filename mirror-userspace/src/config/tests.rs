use super::*;

const OWN: &str = r#"
capture:
  interfaces: [eth0]
  ports: [8000]
routes:
  - name: default
    mirror: {host: httpbin, subset: v2}
    mirrorPercentage: {value: 100.0}
endpoints:
  httpbin/v2: ["10.77.0.3:8000"]
"#;

/// Istio's mirroring task (httpbin v1 → v2), exactly as its documentation gives it.
pub const ISTIO_TASK: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 100.0
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
capture: {interfaces: [eth0], ports: [8000]}
endpoints:
  httpbin/v2: ["10.77.0.3:8000"]
"#;

fn err(text: &str) -> String {
    format!("{:#}", Config::parse(text, "t.yaml").unwrap_err())
}

#[test]
fn own_document_parses() {
    let c = Config::parse(OWN, "t").unwrap();
    assert_eq!(c.capture.ports, vec![8000]);
    assert_eq!(c.tables.len(), 1);
    assert_eq!(c.route_count(), 1);
    assert_eq!(c.replay.connections, 4);
    // Ring size: 4 MiB per CPU, less with many CPUs (64 MiB over all), or as configured.
    assert_eq!(c.capture.perf_pages_for(2), 1024);
    assert_eq!(c.capture.perf_pages_for(64), 256);
    assert_eq!(c.capture.perf_pages_for(96), 128);
    assert_eq!(c.capture.perf_pages_for(4096), 64);
    let set = Config::parse(&OWN.replace("ports: [8000]", "ports: [8000]\n  perfPages: 8"), "t").unwrap();
    assert_eq!(set.capture.perf_pages_for(2), 8);
}

#[test]
fn the_istio_mirroring_task_loads_as_it_is() {
    let c = Config::parse(ISTIO_TASK, "t").unwrap();
    assert_eq!(c.tables[0].source, "VirtualService default/httpbin");
    assert_eq!(c.tables[0].hosts.as_deref(), Some(&["httpbin".to_string()][..]));
    assert_eq!(c.subsets["httpbin"], ["v1", "v2"]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn errors_have_file_line_column_and_what_was_expected() {
    let e = err(&OWN.replace("ports:", "prots:"));
    assert!(e.starts_with("t.yaml:4:3: capture: unknown field `prots`, expected one of"), "{e}");
    assert!(e.contains("did you mean `ports`?"), "{e}");
    let e = err(&ISTIO_TASK.replace("mirrorPercentage:", "mirrorPercentag:"));
    assert!(e.contains("t.yaml:17:5") && e.contains("did you mean `mirrorPercentage`?"), "{e}");
    let e = err(&OWN.replace("interfaces: [eth0]", "interfaces: eth0"));
    assert!(e.starts_with("t.yaml:3:"), "{e}");
    let e = err(&OWN.replace("100.0", "150"));
    assert!(e.contains("t.yaml:8:") && e.contains("routes[0] (default).mirrorPercentage.value: 150"), "{e}");
    let e = err(&OWN.replace("httpbin/v2:", "httpbin/v3:"));
    assert!(e.contains("no endpoint for 'httpbin/v2'") && e.contains("httpbin/v3"), "{e}");
    let e = err(&OWN.replace("10.77.0.3:8000", "nowhere"));
    assert!(e.contains("t.yaml:10:17:") && e.contains("not an address:port"), "{e}");
    let e = err(&ISTIO_TASK.replace("subset: v2\n    mirrorPercentage", "subset: v3\n    mirrorPercentage"));
    assert!(e.contains("subset 'v3'") && e.contains("v1, v2"), "{e}");
    let e = err(&OWN.replace("    mirror:", "    match: [{uri: {regex: \"(\"}}]\n    mirror:"));
    assert!(e.contains("invalid regular expression"), "{e}");
    let e = err(&OWN.replace("    mirror:", "    match: [{headers: {Cookie: {}}}]\n    mirror:"));
    assert!(e.contains("lower case"), "{e}");
}

#[test]
fn mirror_and_mirrors_together_is_an_error_and_mirror_percent_warns() {
    let both = OWN
        .replace("    mirrorPercentage: {value: 100.0}", "    mirrors: [{destination: {host: httpbin, subset: v2}}]");
    assert!(err(&both).contains("`mirror` and `mirrors` cannot both be set"));
    let old = OWN.replace("mirrorPercentage: {value: 100.0}", "mirrorPercent: 50");
    let c = Config::parse(&old, "t").unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("mirrorPercent is deprecated")), "{:?}", c.warnings);
    let snake = OWN.replace("mirrorPercentage: {value: 100.0}", "mirror_percent: 50");
    assert_eq!(Config::parse(&snake, "t").unwrap().tables[0].routes[0].mirror_percent, Some(50));
}

#[test]
fn policies_must_name_an_endpoint() {
    let text = format!("{OWN}mirrorPolicies:\n  httpbin/v9: {{host: keep}}\n");
    assert!(err(&text).contains("mirrorPolicies.httpbin/v9"));
    let text = format!(
        "{OWN}mirrorPolicies:\n  httpbin/v2:\n    host: {{set: shadow.example}}\n    headers: {{remove: [authorization], set: {{x-shadow: '1'}}}}\n    sampleBy: {{cookie: SessionID}}\n"
    );
    let c = Config::parse(&text, "t").unwrap();
    let p = &c.policies["httpbin/v2"];
    assert_eq!(p.host, HostRewrite::Set("shadow.example".into()));
    assert_eq!(p.sample_by, Some(SampleKey::Cookie("SessionID".into())));
}
