//! Every example in `config/` must load and validate.

use std::path::Path;

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let cfg = mirror::config::Config::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            mirror::route::Router::new(&cfg).unwrap();
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} example configs found in {}", dir.display());
}
