//! Every example in `config/` must load and validate.

use std::path::Path;

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let cfg = mirror::config::Config::read(&path).unwrap_or_else(|e| panic!("{e}"));
            mirror::route::Router::new(&cfg).unwrap();
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} example configs found in {}", dir.display());
}

/// The config inside the DaemonSet's ConfigMap must be valid too.
#[test]
fn daemonset_configmap_holds_a_valid_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("  mirror.yaml: |\n").expect("ConfigMap key") + "  mirror.yaml: |\n".len();
    let body: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let cfg = mirror::config::Config::parse(&body, "daemonset.yaml ConfigMap").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.capture.ports, [8000]);
    mirror::route::Router::new(&cfg).unwrap();
}
