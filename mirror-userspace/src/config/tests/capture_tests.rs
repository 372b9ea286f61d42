//! `capture.interfaces` entries (names, globs, directions) and `capture.addresses` (issue 13):
//! what loads, and what is refused at which line and column.

use super::*;

fn capture(section: &str) -> Result<Config, ConfigError> {
    let text = format!(
        "capture:\n{section}routes:\n  - name: default\n    mirror: {{host: httpbin, subset: v2}}\nendpoints:\n  httpbin/v2: [\"10.77.0.3:8000\"]\n"
    );
    Config::parse(&text, "t.yaml")
}

fn place(e: &ConfigError) -> (usize, usize) {
    (e.line().unwrap_or(0), e.column().unwrap_or(0))
}

#[test]
fn names_globs_and_directions_load() {
    let c = capture(
        "  interfaces:\n    - eth0\n    - {name: \"cali*\", direction: egress}\n    - name: lxc*\n      direction: egress\n    - {name: eth1, direction: ingress}\n    - {name: \"veth[0-9]*\"}\n  ports: [8000]\n",
    )
    .unwrap();
    let got: Vec<(String, Direction)> = c.capture.interfaces.iter().map(|e| (e.name.clone(), e.direction)).collect();
    assert_eq!(
        got,
        [
            ("eth0".to_string(), Direction::Ingress),
            ("cali*".to_string(), Direction::Egress),
            ("lxc*".to_string(), Direction::Egress),
            ("eth1".to_string(), Direction::Ingress),
            ("veth[0-9]*".to_string(), Direction::Ingress),
        ]
    );
    assert!(!c.capture.interfaces[0].is_glob());
    assert!(c.capture.interfaces[1].is_glob() && c.capture.interfaces[4].is_glob());
    assert_eq!(format!("{:?}", c.capture.interfaces[1]), "cali*:egress");
    assert!(c.capture.addresses.is_empty(), "absent: every address");
}

#[test]
fn addresses_load_in_both_families_and_a_bare_address_is_one_host() {
    let c = capture("  interfaces: [eth0]\n  ports: [8000]\n  addresses: [\"10.244.0.0/16\", \"fd00:244::/64\", 10.0.0.7, \"::1\"]\n")
        .unwrap();
    let got: Vec<String> = c.capture.addresses.iter().map(ToString::to_string).collect();
    assert_eq!(got, ["10.244.0.0/16", "fd00:244::/64", "10.0.0.7/32", "::1/128"]);
}

#[test]
fn a_bad_direction_is_refused_where_it_is_written() {
    let e = capture("  interfaces:\n    - {name: cali*, direction: egres}\n  ports: [8000]\n").unwrap_err();
    assert_eq!(place(&e), (3, 32), "{e}");
    assert!(e.to_string().contains("unknown variant `egres`, expected `ingress` or `egress`"), "{e}");
}

#[test]
fn an_unknown_field_of_an_entry_gets_a_suggestion() {
    let e = capture("  interfaces:\n    - {name: cali*, directon: egress}\n  ports: [8000]\n").unwrap_err();
    match e.kind() {
        ConfigErrorKind::UnknownField { field, suggestion, .. } => {
            assert_eq!(field, "directon");
            assert_eq!(suggestion.as_deref(), Some("direction"));
        }
        _ => panic!("{e}"),
    }
    assert_eq!(e.line(), Some(3), "{e}");
    let e = capture("  interfaces:\n    - {direction: egress}\n  ports: [8000]\n").unwrap_err();
    assert!(e.to_string().contains("missing field `name`"), "{e}");
}

#[test]
fn bad_names_and_globs_are_refused_at_their_place() {
    let e = capture("  interfaces:\n    - eth0\n    - {name: \"cali[\", direction: egress}\n  ports: [8000]\n")
        .unwrap_err();
    assert!(matches!(e.kind(), ConfigErrorKind::BadGlob { pattern, .. } if pattern == "cali["), "{e}");
    assert_eq!(place(&e), (4, 14), "{e}");
    let e = capture("  interfaces: [eth0, \"has space\"]\n  ports: [8000]\n").unwrap_err();
    assert!(matches!(e.kind(), ConfigErrorKind::BadInterface { .. }), "{e}");
    assert_eq!(place(&e), (2, 22), "{e}");
    let e = capture("  interfaces: [a_name_too_long_x]\n  ports: [8000]\n").unwrap_err();
    assert!(matches!(e.kind(), ConfigErrorKind::BadInterface { .. }), "{e}");
    // A glob may be longer than a name (up to 64 bytes), never contain '/'.
    capture("  interfaces: [\"a_glob_longer_than_a_name*\"]\n  ports: [8000]\n").unwrap();
    let e = capture("  interfaces: [\"x/*\"]\n  ports: [8000]\n").unwrap_err();
    assert!(matches!(e.kind(), ConfigErrorKind::BadInterface { .. }), "{e}");
}

#[test]
fn bad_prefixes_are_refused_at_their_place_with_the_fix() {
    let e = capture("  interfaces: [eth0]\n  ports: [8000]\n  addresses: [\"10.244.0.0/16\", \"10.244.1.5/16\"]\n")
        .unwrap_err();
    assert_eq!(place(&e), (4, 32), "{e}");
    assert!(e.to_string().contains("host bits are set (did you mean 10.244.0.0/16?)"), "{e}");
    for bad in ["10.244.0.0/33", "fd00::/129", "pods", "10.244.0.0/"] {
        let e = capture(&format!("  interfaces: [eth0]\n  ports: [8000]\n  addresses: [\"{bad}\"]\n")).unwrap_err();
        assert!(matches!(e.kind(), ConfigErrorKind::BadPrefix { prefix, .. } if prefix == bad), "{e}");
        assert_eq!(e.path(), "capture.addresses");
    }
}

#[test]
fn too_many_addresses_are_refused() {
    let list: Vec<String> =
        (0..=limits::MAX_CAPTURE_ADDRESSES).map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256)).collect();
    let e =
        capture(&format!("  interfaces: [eth0]\n  ports: [8000]\n  addresses: [{}]\n", list.join(", "))).unwrap_err();
    assert!(
        matches!(e.kind(), ConfigErrorKind::TooMany { field: "capture.addresses", max } if *max == limits::MAX_CAPTURE_ADDRESSES),
        "{e}"
    );
}
